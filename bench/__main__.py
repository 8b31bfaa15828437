"""`python -m bench [--size tiny|small|full] [--servers gunicorn,waitress,granian] [--out DIR] ...`

Runs the benchmark (see bench/run.py) and writes results.json and RESULTS.md to --out
(default: the bench/ folder). `--size full` is the real run (10k and 1M contacts): run it on a
quiet machine. The broker is contacts_dev.embedded_kafka.resolve() unless --brokers is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench import procs
from bench.run import PRESETS, SECTIONS, Plan, main as run


def parse(argv: list[str]) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--size", choices=sorted(PRESETS), default="small", help="preset of sizes and request counts [small]")
    parser.add_argument("--sizes", help="contacts per step, comma-separated, overriding the preset (e.g. 2000,20000)")
    parser.add_argument("--servers", help="servers tried for the service, first is the reference "
                        "[default: granian (the production default), then gunicorn and waitress, those installed]")
    parser.add_argument("--only", help=f"sections to run (the import fill always runs): {','.join(SECTIONS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the preset's request counts (longer, steadier loads)")
    parser.add_argument("--threads", type=int, default=32, help="HTTP_THREADS of the service and the baselines [32]")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients [16]")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder of results.json and RESULTS.md [bench/]")
    parser.add_argument("--brokers", help="bootstrap servers of a running broker [default: embedded_kafka.resolve()]")
    parser.add_argument("--profile", action="store_true", help="sample the service with py-spy during the heavy phases")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, stores, profiles)")
    args = parser.parse_args(argv)
    preset = dict(PRESETS[args.size])
    for key in ("info_requests", "write_single", "write_concurrent", "list_pages"):
        preset[key] = max(1, int(preset.get(key, getattr(Plan, key)) * args.scale))
    if args.sizes:
        preset["sizes"] = [int(x) for x in args.sizes.split(",") if x]
    if args.servers:
        servers = [s for s in args.servers.split(",") if s]
        unknown = [s for s in servers if s not in procs.SERVERS]
        if unknown:
            parser.error(f"unknown servers {unknown}; choose from {procs.SERVERS}")
        missing = [s for s in servers if not procs.server_available(s)]
        if missing:
            parser.error(f"not installed: {missing}")
    else:
        servers = [s for s in procs.SERVERS if procs.server_available(s)]
    # The reference every other server is compared with: what `python -m api` runs by default
    # (granian), or gunicorn where granian is missing, unless --servers names the first.
    if not args.servers:
        reference = "granian" if "granian" in servers else "gunicorn"
        servers = [reference] + [s for s in servers if s != reference]
    sections = set(SECTIONS) if not args.only else {s for s in args.only.split(",") if s}
    if sections - set(SECTIONS):
        parser.error(f"unknown sections {sorted(sections - set(SECTIONS))}")
    plan = Plan(**preset, servers=servers, sections=sections, profile=args.profile, http_threads=args.threads,
                concurrency=args.concurrency)
    return plan, args


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    plan, args = parse(argv)
    run(plan, args.out, brokers=args.brokers, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
