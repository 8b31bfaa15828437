"""`make run`: a Kafka broker whose data lives in the clone, and the service on it.

    python -m contacts_dev.run            # what `make run` runs
    python -m contacts_dev.run --reset    # what `make reset` runs: forget everything it kept

Everything it keeps is in one folder of the clone, ``.run/`` (``CONTACTS_RUN_DIR`` moves it;
git ignores it): ``kafka/`` the embedded broker's data and log, ``state/`` the service's store
(``STATE_DIR`` unless set), and while it runs ``run.json``, where the broker and the service
are, so that ``contacts demo`` finds them by itself. Stopped (Ctrl-C) and started again, the
broker finds its data (same cluster id; same ports when they are free) and the service its
store and offsets: what you made is still there and nothing is rebuilt.

The broker: ``KAFKA_BROKERS`` when set (nothing is started); else the kept single-node KRaft
broker from Apache Kafka's jars; else, when no JDK or Maven can provide it and a Docker engine
answers, a testcontainers Kafka, which keeps nothing.

Only the standard library is imported at the top: ``make reset`` runs before any install.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CLONE = Path(__file__).resolve().parent.parent
RUN_FILE = "run.json"
# The platform creates its topics; here nothing else would. Partitions as a small platform's.
PLATFORM_TOPIC_PARTITIONS = 4


def run_dir() -> Path:
    """The folder `make run` keeps its data in: $CONTACTS_RUN_DIR, else the clone's .run/."""
    configured = os.environ.get("CONTACTS_RUN_DIR", "").strip()
    return Path(configured).resolve() if configured else CLONE / ".run"


def running(folder: Path | None = None) -> dict | None:
    """What a running `make run` on ``folder`` wrote to run.json (brokers, url, schema registry,
    pid), or None when none runs (never started, stopped, or killed without cleaning up)."""
    path = (folder or run_dir()) / RUN_FILE
    try:
        info = json.loads(path.read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if _is_run_process(pid) else None


def _is_run_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"contacts_dev.run" in cmdline  # a pid reused by another program is not a run


def reset(folder: Path) -> int:
    info = running(folder)
    if info is not None:
        print(f"make run is running (pid {info['pid']}): stop it (Ctrl-C) before wiping {folder}", file=sys.stderr)
        return 1
    if not folder.exists():
        print(f"nothing to wipe: {folder} does not exist; the next `make run` starts empty")
        return 0
    shutil.rmtree(folder)
    print(f"wiped {folder} (the broker's topics, the service's store): the next `make run` starts empty")
    return 0


def _die_with_parent() -> None:
    import ctypes

    # SIGTERM to the service if this process dies, even by SIGKILL: no orphan holding the port
    # and the store's lock when `make run` is started again.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_broker(folder: Path):
    from contacts_dev import embedded_kafka

    if os.environ.get("KAFKA_BROKERS"):
        return embedded_kafka.resolve()
    try:
        return embedded_kafka.start_kraft(log_dir=folder / "kafka", data_dir=folder / "kafka")
    except embedded_kafka.BrokerError as err:
        if not embedded_kafka.docker_available():
            raise
        print(f"no embedded broker ({err}); using a testcontainers Kafka, which keeps nothing across restarts", flush=True)
        return embedded_kafka.start_testcontainers()


def _ensure_platform_topics(bootstrap: str) -> None:
    """The messages and metadata topics the platform would have created (auto-create reads them,
    `contacts demo` writes them): created here once, so that the service subscribes to topics
    that exist instead of waiting for a metadata refresh to find them."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from contacts_streams.config import Config

    config = Config.from_env({**os.environ, "KAFKA_BROKERS": bootstrap})
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=30).topics
    wanted = [NewTopic(t, PLATFORM_TOPIC_PARTITIONS, -1) for t in (config.messages_topic, config.metadata_topic) if t not in existing]
    if not wanted:
        return
    for future in admin.create_topics(wanted, operation_timeout=30).values():
        try:
            future.result(30)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def serve(folder: Path) -> int:
    from contacts_dev import embedded_kafka

    from contacts_streams.config import Config, ConfigError

    if running(folder) is not None:
        print(f"make run is already running on {folder}; stop it first", file=sys.stderr)
        return 1
    try:  # a bad setting stops it before a broker is started for nothing
        Config.from_env({**os.environ, "KAFKA_BROKERS": os.environ.get("KAFKA_BROKERS") or "localhost:9092"})
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        broker = _start_broker(folder)
    except embedded_kafka.BrokerError as err:
        print(f"no Kafka broker: {err}", file=sys.stderr)
        return 1
    try:
        kept = folder / "kafka" if broker.kind == "kraft" else None
        print(f"kafka ({broker.kind}) at {broker.bootstrap_servers} in {time.monotonic() - started:.1f}s", flush=True)
        if kept is not None:
            print(f"kafka data (kept across restarts, `make reset` wipes it): {kept}", flush=True)
        if broker.log_file:
            print(f"kafka log: {broker.log_file}", flush=True)
        _ensure_platform_topics(broker.bootstrap_servers)
        env = {**os.environ, "KAFKA_BROKERS": broker.bootstrap_servers}
        env.setdefault("STATE_DIR", str(folder / "state"))
        port = env.get("PORT", "").strip() or "8080"
        info = {
            "pid": os.getpid(),
            "brokers": broker.bootstrap_servers,
            "url": f"http://localhost:{port}",
            "schema_registry_url": env.get("KAFKA_SCHEMA_REGISTRY_URL", "").strip() or None,
            "state_dir": env["STATE_DIR"],
        }
        (folder / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n")
        print("in another terminal, `make demo` writes demo conversations for auto-create to pick up", flush=True)
        return _run_service(env)
    finally:
        (folder / RUN_FILE).unlink(missing_ok=True)
        broker.stop()


def _run_service(env: dict) -> int:
    # Its own process group: Ctrl-C reaches this process only, which stops the service (SIGTERM:
    # drain, flush, close the store) before the broker it needs to do so.
    service = subprocess.Popen([sys.executable, "-m", "api"], env=env, process_group=0, preexec_fn=_die_with_parent)
    stopping = []

    def stop(signum, _frame):
        if service.poll() is not None:
            return
        if stopping:  # a second Ctrl-C: quick shutdown
            service.send_signal(signal.SIGINT)
        else:
            stopping.append(signum)
            print("\nstopping the service, then the broker (what you made is kept)", flush=True)
            service.send_signal(signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    code = service.wait()
    # Stopped on request: a clean end, whatever the service's exit code for the signal.
    return 0 if stopping and code in (0, -signal.SIGTERM, -signal.SIGINT) else code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m contacts_dev.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reset", action="store_true", help="wipe the kept broker data and store instead of running")
    args = parser.parse_args(argv)
    folder = run_dir()
    return reset(folder) if args.reset else serve(folder)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
