"""The benchmark at a tiny size, on the session's broker, so that it cannot rot.

It runs every section but the three-replica one once (200 contacts, gunicorn only: the other servers are optional
installs) into a temporary folder, never into bench/results.json, and checks that every figure
came out with a unit, a number and a baseline, and every chart as a valid PNG.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.__main__ import parse  # noqa: E402
from bench.charts import CHARTS  # noqa: E402
from bench.run import SECTIONS  # noqa: E402
from bench.run import main as run_bench  # noqa: E402

pytestmark = pytest.mark.broker

EXPECTED = {
    "client.ceiling.rps",
    "info.flask_ceiling.rps",
    "import.rate",
    "info.gunicorn.rps",
    "info.gunicorn.p99",
    "list.start.p50", "list.start.p99", "list.middle.p50", "list.middle.p99", "list.end.p50", "list.end.p99",
    "export.csv", "export.ndjson",
    "find.lookup.p50", "find.lookup.p99", "find.search.start.p50", "find.search.middle.p50", "find.search.end.p50",
    "find.duplicates.start.p50", "find.duplicates.next.p50",
    *{f"write.{op}.c{c}.p{q}" for op in ("create", "update") for c in (1, 16) for q in (50, 99)},
    "memory.rss",
    "restart.ready",
    "rebuild.seconds",
    "rebuild.rate",
    "auto_create.rate",
    "import.command",
}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_a_tiny_run_writes_every_figure_with_a_unit_and_a_number(kafka, tmp_path):
    # The three-replica section (three services, a kill -9 and a failover window of half a
    # minute) is left to `make bench`; tests/faults/test_replicas.py covers what it drives.
    sections = ",".join(s for s in SECTIONS if s != "replicas")
    plan, _ = parse(["--size", "tiny", "--servers", "gunicorn", "--only", sections])
    run_bench(plan, tmp_path, brokers=kafka)

    results = json.loads((tmp_path / "results.json").read_text())
    figures = {f["key"]: f for f in results["figures"]}
    assert EXPECTED <= set(figures), f"missing figures: {sorted(EXPECTED - set(figures))}"
    for key, f in figures.items():
        assert f["unit"] and f["baseline_unit"], key
        assert _number(f["value"]) and f["value"] >= 0, (key, f["value"])
        assert _number(f["baseline"]) and f["baseline"] > 0, (key, f["baseline"])
        assert _number(f["ratio"]), (key, f["ratio"])
        assert f["baseline_label"], key
        if f["target"] is not None:
            assert isinstance(f["passed"], bool), key
    sizes = {f["size"] for f in results["figures"] if f["size"] is not None}
    assert sizes == {200}
    for field in ("cores", "memory_gb", "cpu_model"):
        assert results["machine"][field], field
    for field in ("python", "kafka", "librdkafka", "rocksdict"):
        assert results["versions"][field], field
    assert results["date"]

    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "| figure | contacts | value | baseline | ratio | target | result |" in markdown
    for f in results["figures"]:
        assert f["label"] in markdown

    # Every chart, as a PNG an image reader opens, embedded in RESULTS.md; the latency figures
    # keep the distribution the CDF is drawn from, and the list its page cost along the way.
    for name in CHARTS:
        with Image.open(tmp_path / name) as image:
            image.verify()
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 300, (name, image.size)
        assert f"({name})" in markdown, name
    for key in ("info.gunicorn.p99", "list.start.p50", "write.create.c16.p50", "import.rate"):
        samples = figures[key]["samples"]
        assert samples and samples["count"] > 0 and samples["ms"] == sorted(samples["ms"]), key
    along = [p["position"] for p in results["curves"]["list.pages"]]
    assert len(along) >= 4 and along == sorted(along) and along[0] == 0
