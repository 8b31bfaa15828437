"""A real Apache Kafka broker for `make run` and the tests.

Resolution order (DESIGN.md, "Real parts, everywhere"):
1. ``KAFKA_BROKERS`` set: used as it is, nothing is started.
2. a Docker engine answers: a testcontainers Kafka.
3. otherwise: a single-node KRaft broker run from Apache Kafka's own jars, resolved once from
   Maven Central with ``mvn`` (``kafka-pom.xml`` beside this file) into the per-user XDG cache,
   so CI and later runs reuse them.

Run as a program it starts a broker, exports ``KAFKA_BROKERS`` and runs the command after ``--``,
stopping the broker when the command ends:  ``python -m contacts_dev.embedded_kafka -- CMD``.
``make run`` is ``contacts_dev.run``: a broker that keeps its data in the clone (``data_dir``).
"""

from __future__ import annotations

import base64
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from contacts_dev.child import run_beside

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).with_name("kafka-pom.xml")
START_TIMEOUT_S = 60.0


class BrokerError(RuntimeError):
    """The broker could not be provided; the message says why."""


@dataclass
class Broker:
    bootstrap_servers: str
    kind: str  # "external", "testcontainers" or "kraft"
    log_file: Path | None = None
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)
    pid: int | None = None  # the broker's own process, when this module started it (the bench counts its CPU)

    def stop(self) -> None:
        self._stop()
        self._stop = lambda: None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "contacts-streams"


def kafka_jars() -> Path:
    """The folder of Kafka's runtime jars, resolved with Maven on first use."""
    libs = cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("no KAFKA_BROKERS, no Docker engine, and no `mvn` to fetch Kafka's jars")
    staging = Path(tempfile.mkdtemp(prefix="kafka-jars-", dir=_ensure(libs.parent)))
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), f"-Dkafka.version={KAFKA_VERSION}",
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(f"mvn could not fetch Kafka {KAFKA_VERSION}:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    (staging / ".complete").touch()
    # A concurrent first run may have won the race; either copy is complete.
    try:
        staging.rename(libs)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return libs


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as the JVM's acceptor sets it: a port left in TIME_WAIT by the last run is
    # free for Kafka, one that something listens on is not.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _kept_ports(data: Path) -> tuple[int, int]:
    """The ports a kept data folder used last time where they are still free, else new ones
    (remembered for next time): clients find the broker where they found it before."""
    remembered = data / "ports.json"
    try:
        ports = json.loads(remembered.read_text())
        port, controller_port = int(ports["port"]), int(ports["controller_port"])
    except (OSError, ValueError, KeyError, TypeError):
        port = controller_port = 0
    port = port if port and _port_free(port) else _free_port()
    controller_port = controller_port if controller_port and controller_port != port and _port_free(controller_port) else _free_port()
    remembered.write_text(json.dumps({"port": port, "controller_port": controller_port}) + "\n")
    return port, controller_port


def _wait_unlocked(data: Path, timeout: float = 30.0) -> None:
    """Wait until no broker holds the kept data folder (Kafka holds an fcntl lock on
    ``logs/.lock`` while it runs): the broker of a run that was killed hard gets SIGTERM from
    its parent's death and needs a moment to go. A second live run on the folder is an error."""
    lock_file = data / "logs" / ".lock"
    deadline = time.monotonic() + timeout
    said = False
    while lock_file.exists():
        with open(lock_file, "a") as handle:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass
            else:
                fcntl.lockf(handle, fcntl.LOCK_UN)
                return
        if time.monotonic() > deadline:
            raise BrokerError(f"another Kafka broker still runs on {data} (its lock: {lock_file}); stop it first")
        if not said:
            print(f"waiting for the Kafka broker of an earlier run to let go of {data}", file=sys.stderr, flush=True)
            said = True
        time.sleep(0.5)


def _die_with_parent() -> None:
    # The JVM gets SIGTERM if the Python process that started it dies, even by SIGKILL: no orphans.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java:
        raise BrokerError("no `java` on PATH (Kafka needs a JDK 17 or newer)")
    return java


LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="WARN"/>
  </Loggers>
</Configuration>
"""


@dataclass(frozen=True)
class Listener:
    """An extra client listener of a KraftBroker: its name, security protocol and the settings
    of that listener (written as ``listener.name.<name>.<key>``), e.g. a SASL_SSL one::

        Listener("SECURE", "SASL_SSL", {"sasl.enabled.mechanisms": "PLAIN", ...})
    """

    name: str
    protocol: str
    properties: dict[str, str] = field(default_factory=dict)


class KraftBroker:
    """A single-node KRaft broker that can be stopped and started again on the same ports and
    data folder (fault tests take it away under load and bring it back)::

        broker = KraftBroker().start()
        broker.stop(kill=True)   # SIGKILL (a crash) or SIGTERM (a controlled shutdown)
        broker.start()           # same ports, same log.dirs, same cluster id
        broker.close()           # stop and delete the data folder

    Extra listeners (``listeners=[Listener(...)]``) serve clients beside PLAINTEXT, which stays
    the inter-broker and readiness listener; ``broker.bootstrap(name)`` is a listener's address.
    ``settings`` adds or overrides broker properties (``{"log.retention.check.interval.ms":
    "1000"}``); ``broker.log_dirs`` is where its topics' files are.

    With ``data_dir`` (``make run``'s ``.run/kafka``) the data outlives the process: a later
    KraftBroker on the same folder finds it again (the storage is formatted once, so the cluster id
    and node stay those of meta.properties), on the same ports when they are free and on new ones
    (advertised with them) when something else took them; close() then keeps the data too.
    """

    def __init__(
        self,
        log_dir: Path | None = None,
        data_dir: Path | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
        settings: dict[str, str] | None = None,
    ):
        libs = kafka_jars()
        self._jvm = [_java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC"]
        self.kept = data_dir is not None
        if self.kept:
            self.data = _ensure(Path(data_dir).resolve())
            _wait_unlocked(self.data)
            self.port, self.controller_port = _kept_ports(self.data)
        else:
            self.data = Path(tempfile.mkdtemp(prefix="contacts-kafka-"))
            self.port, self.controller_port = _free_port(), _free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.listener_ports = {listener.name: _free_port() for listener in listeners}
        extra = "".join(f",{name}://127.0.0.1:{port}" for name, port in self.listener_ports.items())
        protocols = "".join(f",{listener.name}:{listener.protocol}" for listener in listeners)
        listener_props = [f"listener.name.{l.name.lower()}.{k}={v}" for l in listeners for k, v in l.properties.items()]
        self.log_file = _ensure(log_dir or Path(tempfile.gettempdir())) / f"contacts-kafka-{self.port}.log"
        self._proc: subprocess.Popen | None = None
        props = self.data / "server.properties"
        self.log_dirs = self.data / "logs"
        defaults = {"log.cleaner.backoff.ms": "1000"}
        extra_settings = [f"{k}={v}" for k, v in {**defaults, **(settings or {})}.items()]
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}{extra}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}{extra}",
                    "controller.listener.names=CONTROLLER",
                    f"listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{protocols}",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data / 'logs'}",
                    # Single node: internal topics with one replica, or transactions and groups hang.
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=4",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    *extra_settings,
                    *listener_props,
                ]
            )
            + "\n"
        )
        (self.data / "log4j2.xml").write_text(LOG4J2.replace("{log}", str(self.log_file)))
        self._jvm += [f"-Dlog4j2.configurationFile={self.data / 'log4j2.xml'}", "-cp", str(libs / "*")]
        if self.kept and (self.data / "logs" / "meta.properties").exists():
            return  # formatted before: formatting again would give it a new cluster id
        shutil.rmtree(self.data / "logs", ignore_errors=True)  # a format that was interrupted
        fmt = subprocess.run(
            self._jvm + ["kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(props)],
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            shutil.rmtree(self.data / "logs" if self.kept else self.data, ignore_errors=True)
            raise BrokerError(f"kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")

    def bootstrap(self, listener: str) -> str:
        """The address of an extra listener (by name)."""
        return f"127.0.0.1:{self.listener_ports[listener]}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> "KraftBroker":
        """Start the broker (again) on its ports and data; returns once it answers."""
        if self.running:
            return self
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(
                self._jvm + ["kafka.Kafka", str(self.data / "server.properties")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                # Its own process group: Ctrl-C reaches the program that started it, which stops
                # its clients first and then the broker, not all of them at once.
                process_group=0,
            )
        try:
            _wait_ready(self.bootstrap_servers, self._proc, self.log_file, timeout)
        except BaseException:
            self.stop(kill=True)
            raise
        return self

    def stop(self, kill: bool = False, timeout: float = 20.0) -> None:
        """Stop the broker, keeping its data: SIGKILL with kill=True, else SIGTERM (SIGKILL after timeout)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the broker and delete its data folder (a kept one stays)."""
        self.stop()
        if not self.kept:
            shutil.rmtree(self.data, ignore_errors=True)

    @property
    def cluster_id(self) -> str | None:
        """The cluster id the storage was formatted with (meta.properties)."""
        meta = self.data / "logs" / "meta.properties"
        if not meta.exists():
            return None
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return None


def _cluster_id() -> str:
    """A random cluster id as Kafka makes them: base64url of a UUID, never starting with "-"
    (the storage tool's argument parser would take one for an option: 1 start in 64 failed)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def start_kraft(log_dir: Path | None = None, data_dir: Path | None = None) -> Broker:
    """Start a single-node KRaft broker on free loopback ports; its data folder goes on stop,
    unless it is a kept ``data_dir`` (see KraftBroker)."""
    broker = KraftBroker(log_dir, data_dir)
    try:
        broker.start()
    except BaseException:
        broker.close()
        raise
    return Broker(broker.bootstrap_servers, "kraft", broker.log_file, broker.close, broker._proc.pid if broker._proc else None)


def _wait_ready(bootstrap: str, proc: subprocess.Popen | None, log_file: Path | None, timeout: float = START_TIMEOUT_S) -> None:
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"Kafka exited with {proc.returncode} while starting; log: {log_file}\n{_tail(log_file)}")
        try:
            meta = admin.list_topics(timeout=1)
            if meta.brokers:
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise BrokerError(f"Kafka did not answer within {timeout:.0f}s; log: {log_file}\n{_tail(log_file)}")


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def docker_available() -> bool:
    try:
        import docker  # installed with testcontainers
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


def start_testcontainers() -> Broker:
    from testcontainers.kafka import KafkaContainer

    container = KafkaContainer().with_kraft()
    container.start()
    bootstrap = container.get_bootstrap_server()
    _wait_ready(bootstrap, None, None)
    return Broker(bootstrap, "testcontainers", None, container.stop)


def resolve(log_dir: Path | None = None) -> Broker:
    """A running broker, from the first source that answers (see the module docstring)."""
    external = os.environ.get("KAFKA_BROKERS")
    if external:
        return Broker(external, "external")
    if docker_available():
        return start_testcontainers()
    return start_kraft(log_dir)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: python -m contacts_dev.embedded_kafka -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]
    started = time.monotonic()
    broker = resolve()
    print(f"kafka ({broker.kind}) at {broker.bootstrap_servers} in {time.monotonic() - started:.1f}s", flush=True)
    if broker.log_file:
        print(f"kafka log: {broker.log_file}", flush=True)
    return run_beside(command, {"KAFKA_BROKERS": broker.bootstrap_servers}, broker.stop)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
