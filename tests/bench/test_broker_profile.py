"""The broker profile's arithmetic (the JMX and /proc reading are exercised by the bench smoke
test's real broker)."""

import os

import pytest
from support import listening

from bench import broker_profile
from bench.broker_profile import Snapshot


def test_the_profile_counts_a_phase_per_operation_and_by_thread():
    before = Snapshot({"Produce": (100, 50.0), "Fetch": (10, 1000.0), "FetchConsumer": (10, 1000.0), "EndTxn": (5, 5.0)},
                      {"C2 CompilerThread": 10.0, "data-plane-kafka-request-handler-N": 2.0}, user=20.0, system=5.0)
    after = Snapshot({"Produce": (300, 250.0), "Fetch": (60, 3500.0), "FetchConsumer": (60, 3500.0), "EndTxn": (5, 5.0)},
                     {"C2 CompilerThread": 11.0, "data-plane-kafka-request-handler-N": 5.0}, user=23.0, system=6.0)
    text = broker_profile.describe(before, after, 100, "create")
    assert text.splitlines()[0] == "broker CPU 4.0 s for 100 creates = 40.00 ms per create (user 3.0 s, system 1.0 s)"
    assert "requests: 250 = 2.50 per create" in text  # FetchConsumer repeats Fetch: not counted twice
    assert "2.00 per create  Produce" in text and "mean 1.00 ms" in text
    assert "0.50 per create  Fetch" in text and "long-poll" in text
    assert "EndTxn" not in text  # no request of that kind in the phase
    assert "75.0%  data-plane-kafka-request-handler-N" in text and "25.0%  C2 CompilerThread" in text


def test_this_process_threads_are_read_from_proc():
    groups, user, system = broker_profile.threads(os.getpid())
    assert groups and user + system > 0


def _kafka_jvm_on(port: int) -> int | None:
    """The local broker JVM listening on the port: the session's own broker, not one that
    another test (or another run on the machine) started meanwhile."""
    sockets = {f"socket:[{inode}]" for _address, inode in listening(port)}
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or b"kafka.Kafka" not in open(f"/proc/{entry}/cmdline", "rb").read():
                continue
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in sockets for fd in os.listdir(f"/proc/{entry}/fd")):
                return int(entry)
        except OSError:
            continue
    return None


@pytest.mark.broker
def test_a_running_broker_tells_its_requests_by_type(kafka):
    pid = _kafka_jvm_on(int(kafka.rsplit(":", 1)[1]))
    if pid is None:
        pytest.skip("the session's broker is not a local JVM (KAFKA_BROKERS or a container)")
    counts = broker_profile.requests(pid)
    # Every client starts with these; the session's own broker has answered some by now.
    assert counts.get("ApiVersions", (0, 0))[0] > 0 and counts.get("Metadata", (0, 0))[0] > 0
