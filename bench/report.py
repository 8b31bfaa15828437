"""Figures, the machine they were measured on, and the two result files."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Sequence


@dataclass
class Figure:
    key: str  # stable name, e.g. "write.create.c16.p99"
    section: str
    label: str
    size: int | None  # contacts in the store when measured
    value: float
    unit: str
    baseline_label: str
    baseline: float
    baseline_unit: str
    target: str | None = None
    passed: bool | None = None
    note: str = ""
    samples: dict | None = None  # the latency distribution behind the figure (see distribution()), for the charts
    ratio: float = field(init=False)

    def __post_init__(self) -> None:
        self.value = float(self.value)
        self.baseline = float(self.baseline)
        self.ratio = self.value / self.baseline if self.baseline else float("nan")


# Where the latency distribution of a figure is kept: every percentile, and the tail finer (a
# full run times up to 40k requests a figure; 110 points draw the same curve in a few kB).
QUANTILES = tuple(sorted({0.0, 0.001, 0.005, *(i / 100 for i in range(1, 100)), 0.995, 0.999, 0.9995, 0.9999, 1.0}))


def distribution(latencies: Sequence[float], name: str, clients: int = 1, baseline: bool = False) -> dict | None:
    """A compact latency distribution (latencies in seconds): the nearest-rank quantiles in ms,
    as `client.percentile` computes them, so the curve passes through the table's p50 and p99.
    `baseline`: a reference curve (drawn grey), not the service."""
    if not latencies:
        return None
    ordered = sorted(latencies)
    n = len(ordered)
    ms = [round(ordered[min(n - 1, max(0, math.ceil(round(q * n, 9)) - 1))] * 1000.0, 4) for q in QUANTILES]
    return {"name": name, "clients": clients, "count": n, "baseline": baseline, "q": list(QUANTILES), "ms": ms}


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "cores": cores,
        "memory_gb": round(mem_gb, 1),
        "cpu_model": cpu or platform.processor() or "unknown",
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions(kafka: str) -> dict:
    import confluent_kafka

    out = {
        "python": platform.python_version(),
        "kafka": kafka,
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent-kafka": _version("confluent-kafka") or confluent_kafka.version()[0],
    }
    for dist in ("rocksdict", "fastavro", "flask", "werkzeug", "gunicorn", "waitress", "granian"):
        v = _version(dist)
        if v:
            out[dist] = v
    return out


def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


SECTIONS = [
    ("writes", "Write latency (broker ack + own-store apply, read-your-writes)"),
    ("info", "/contacts.info, 16 concurrent clients"),
    ("list", "/contacts.list, page of 20 at the start, middle and end"),
    ("find", "Finding people: lookup, search along the matches of a common name, duplicate groups"),
    ("import", "/contacts.import, batches of 1k"),
    ("export", "`contacts export`: every contact to a file, the whole command (#12)"),
    ("auto_create", "Auto-create from a pre-filled messages topic"),
    ("replicas", "Three replicas, one writer: the writer's ceiling and failover after kill -9"),
    ("restart", "Restart and rebuild"),
    ("memory", "Memory"),
    ("client", "Load client check"),
]


def write(out_dir: Path, results: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    return json_path, render(out_dir, results)


def render(out_dir: Path, results: dict) -> Path:
    """RESULTS.md and the charts beside it, from the results alone (no run)."""
    from bench import charts  # matplotlib is imported only to draw

    drawn = charts.render(out_dir, results)
    md_path = out_dir / "RESULTS.md"
    md_path.write_text(markdown(results, drawn))
    return md_path


def results_document(figures: list[Figure], *, machine_info: dict, version_info: dict, params: dict, notes: list[str], profiles: dict) -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "machine": machine_info,
        "versions": version_info,
        "parameters": params,
        "ratio": "value / baseline (latency: times the baseline; throughput: share of the baseline)",
        "figures": [asdict(f) for f in figures],
        "notes": notes,
        "profiles": profiles,
    }


def markdown(results: dict, charts: Sequence[tuple[str, str]] = ()) -> str:
    """The tables; `charts` are (file name relative to RESULTS.md, title) to show first."""
    m, v, p = results["machine"], results["versions"], results["parameters"]
    figures = results["figures"]
    lines = [
        "# contacts-streams benchmark",
        "",
        f"Measured {results['date']} with `{results['command']}`.",
        "",
        f"- **machine**: {m['cores']} cores, {m['memory_gb']} GB memory, {m['cpu_model']} ({m['os']}); "
        f"load average at start {m['load_average_at_start']}",
        "- **versions**: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- **sizes**: {', '.join(_size(n) for n in p['sizes'])} contacts; {p['concurrency']} concurrent clients; "
        f"HTTP_THREADS={p['http_threads']}; servers tried: {', '.join(p['servers'])}",
        "- every figure is paired with a baseline measured in the same run; **ratio = value / baseline** "
        "(for a latency: how many times the baseline; for a throughput: the share of the baseline reached).",
        "",
    ]
    passed = [f for f in figures if f["passed"] is True]
    missed = [f for f in figures if f["passed"] is False]
    lines += [f"**Targets: {len(passed)} pass, {len(missed)} miss.**" + (
        " Missed: " + "; ".join(f"{f['label']} @ {_size(f['size'])} ({_num(f['value'])} {f['unit']}, target {f['target']})" for f in missed)
        if missed else ""), ""]
    if charts:
        lines += ["## Charts", ""] + [f"![{title}]({name})\n" for name, title in charts]
    for section, title in SECTIONS:
        rows = [f for f in figures if f["section"] == section]
        if not rows:
            continue
        lines += [f"## {title}", "", "| figure | contacts | value | baseline | ratio | target | result |",
                  "| --- | ---: | ---: | --- | ---: | --- | --- |"]
        for f in rows:
            result = {True: "pass", False: "**miss**", None: ""}[f["passed"]]
            note = f" ({f['note']})" if f["note"] else ""
            lines.append(
                f"| {f['label']}{note} | {_size(f['size'])} | {_num(f['value'])} {f['unit']} | "
                f"{f['baseline_label']}: {_num(f['baseline'])} {f['baseline_unit']} | {_num(f['ratio'])} | "
                f"{f['target'] or ''} | {result} |"
            )
        lines.append("")
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if results.get("profiles"):
        lines += ["## Profiles (py-spy, service process)", ""]
        for phase, summary in results["profiles"].items():
            lines += [f"### {phase}", "", "```", summary.rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    # `python -m bench.report [bench/results.json]`: RESULTS.md and the charts again from the
    # results of a run, e.g. after a change to a chart, without running the benchmark.
    source = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results.json")
    print(render(source.parent, json.loads(source.read_text())))
