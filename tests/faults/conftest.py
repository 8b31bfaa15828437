"""Fixtures of the fault tests (helpers in faultkit.py; knobs SOAK, FAULT_CYCLES, FAULT_CLIENTS,
FAULT_RECORDS described there)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import Names, ServiceProcess, new_service


@pytest.fixture
def names(kafka, unique) -> Names:
    return Names(kafka, unique)


@pytest.fixture
def spawn(tmp_path, request):
    """spawn(names, state_dir=..., instance_id="fault", **env) -> a started ServiceProcess; every
    process is killed when the test ends (logs in the test's tmp folder, tails shown on failure)."""
    started: list[ServiceProcess] = []

    def make(names: Names, state_dir: Path | str | None = None, instance_id: str = "fault", start: bool = True, **env) -> ServiceProcess:
        process = new_service(names, state_dir or tmp_path / "state", tmp_path, instance_id, start, **env)
        started.append(process)
        return process

    yield make
    for process in started:
        if process.running():
            try:
                process.kill()
            except Exception:
                pass
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for process in started:
            print(f"\n--- log of {process.log_file} (tail) ---\n{process.tail(40)}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


