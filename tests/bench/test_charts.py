"""The benchmark's charts, drawn from results.json alone (no broker): the quantile series kept for
them, the PNGs, and re-rendering a finished run's results."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import charts, client, report  # noqa: E402

PIL = pytest.importorskip("PIL.Image")
COMMITTED = REPO / "bench" / "results.json"


def assert_png(path: Path) -> None:
    with PIL.open(path) as image:
        image.verify()  # a truncated or corrupt file raises
    with PIL.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 600 and height >= 300, (path, image.size)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=30.0), min_size=1, max_size=500))
def test_the_kept_quantiles_are_the_tables_percentiles_and_never_decrease(latencies):
    d = report.distribution(latencies, "x")
    assert d["count"] == len(latencies)
    assert d["ms"] == sorted(d["ms"])
    assert d["ms"][0] == pytest.approx(min(latencies) * 1000, rel=1e-3, abs=1e-4)
    assert d["ms"][-1] == pytest.approx(max(latencies) * 1000, rel=1e-3, abs=1e-4)
    for q in (50, 99):
        kept = d["ms"][d["q"].index(q / 100)]
        assert kept == pytest.approx(client.percentile(latencies, q) * 1000, rel=1e-3, abs=1e-4)


def test_forty_thousand_latencies_keep_a_few_kilobytes():
    rng = random.Random(1)
    d = report.distribution([rng.expovariate(500) for _ in range(40_000)], "info", 16)
    assert len(d["q"]) == len(d["ms"]) <= 200
    assert len(json.dumps(d)) < 4000
    assert report.distribution([], "none") is None


def test_targets_are_read_from_the_figures_own_text():
    assert charts.target_below({"target": "< 15 ms", "unit": "ms"}) == 15
    assert charts.target_below({"target": "< 60 s", "unit": "s"}) == 60
    assert charts.target_below({"target": "< 500 MB", "unit": "MB"}) == 500
    assert charts.target_below({"target": "<= 1.5x the start page (flat)", "unit": "ms"}) is None
    assert charts.target_below({"target": "< 5 ms", "unit": "s"}) is None  # another unit than the figure's
    assert charts.target_above({"target": "> 2,000 req/s and > 70% of the ceiling", "unit": "req/s"}) == 2000
    assert charts.target_share({"target": "> 2,000 req/s and > 70% of the ceiling"}) == 70
    assert charts.target_below({"target": None, "unit": "ms"}) is None


def _figure(key, section, size, value, unit, baseline, target=None, note="", samples=None, label=None):
    f = report.Figure(key, section, label or key, size, value, unit, "baseline", baseline, unit, target,
                      None if target is None else True, note, samples)
    return asdict(f)


def synthetic_results() -> dict:
    """Two sizes with samples on every latency figure, as a run of bench/run.py records them."""
    rng = random.Random(7)
    figures = []

    def lat(scale, n=2000):
        return [rng.lognormvariate(0, 0.5) * scale / 1000 for _ in range(n)]

    figures.append(_figure("write.floor.c16.p50", "writes", None, 2.1, "ms", 1.0,
                           samples=report.distribution(lat(2.0), "Kafka floor (produce, then consumed)", 16, baseline=True)))
    figures.append(_figure("info.flask_ceiling.rps", "info", None, 3252, "req/s", 5562))
    for n, slow in ((10_000, 1.0), (1_000_000, 1.3)):
        for op in ("create", "update"):
            for c in (1, 16):
                figures.append(_figure(f"write.{op}.c{c}.p50", "writes", n, 10, "ms", 1, "< 15 ms",
                                       samples=report.distribution(lat(slow * (1 if c == 1 else 10)), f"/contacts.{op}", c)))
                figures.append(_figure(f"write.{op}.c{c}.p99", "writes", n, 25, "ms", 8, "< 50 ms"))
        for server, ceiling in (("gunicorn", 5562), ("granian", 66880)):
            figures.append(_figure(f"info.{server}.rps", "info", n, ceiling * 0.4 / slow, "req/s", ceiling,
                                   "> 2,000 req/s and > 70% of the ceiling"))
            figures.append(_figure(f"info.{server}.p99", "info", n, 12, "ms", 6,
                                   samples=report.distribution(lat(6 * slow), f"/contacts.info, {server}", 16)))
        figures.append(_figure("import.rate", "import", n, 13000, "contacts/s", 100000, "> 20,000 contacts/s and > 30% of raw",
                               samples=report.distribution(lat(70, 50), "/contacts.import, a batch of 1000")))
        for where, pos in (("start", 0), ("middle", n // 2), ("end", n - 20)):
            figures.append(_figure(f"list.{where}.p50", "list", n, 1.2, "ms", 1.0, None if where == "start" else "<= 1.5x the start page (flat)",
                                   note=f"at contact {pos:,} of {n:,}", samples=report.distribution(lat(1.2), f"page of 20 at the {where}")))
            figures.append(_figure(f"list.{where}.p99", "list", n, 2.5, "ms", 2.0))
        figures.append(_figure("memory.rss", "memory", n, 150 * slow ** 8, "MB", 120, "< 500 MB"))
        figures.append(_figure("restart.ready", "restart", n, 1.1, "s", 2.0, "< 5 s"))
        figures.append(_figure("rebuild.seconds", "restart", n, 0.5 if n < 1_000_000 else 36, "s", 0.1 if n < 1_000_000 else 9,
                               None if n < 1_000_000 else "< 60 s"))
    curve = [{"size": n, "position": p, "total": n, "requests": 100, "p50": 1.1 + p / n / 10, "p99": 2.0 + p / n}
             for n in (10_000, 1_000_000) for p in range(0, n, n // 10)]
    return {"date": "2026-11-30T12:00:00+00:00", "command": "python -m bench --size full",
            "machine": {"cores": 2, "memory_gb": 23.5, "cpu_model": "AMD EPYC", "os": "Linux", "load_average_at_start": [1, 1, 1]},
            "versions": {"python": "3.11"}, "parameters": {"sizes": [10_000, 1_000_000], "concurrency": 16, "http_threads": 32,
                                                             "servers": ["gunicorn", "granian"]},
            "figures": figures, "notes": [], "profiles": {}, "curves": {"list.pages": curve}}


def test_every_chart_is_drawn_as_a_png_and_embedded_in_results_md(tmp_path):
    results = synthetic_results()
    md = report.render(tmp_path, results)
    for name in charts.CHARTS:
        assert_png(tmp_path / name)
    text = md.read_text()
    for name, title in [(n, t) for n, t, _ in charts.DRAW]:
        assert f"![{title}]({name})" in text
    # The tables are still there, below the charts.
    assert text.index("## Charts") < text.index("| figure | contacts | value | baseline | ratio | target | result |")


def test_a_chart_without_data_is_left_out_and_no_old_file_stays(tmp_path):
    results = synthetic_results()
    report.render(tmp_path, results)
    bare = copy.deepcopy(results)
    bare["figures"] = [f for f in bare["figures"] if not f["key"].startswith("list.")]
    bare["curves"] = {}
    for f in bare["figures"]:
        f["samples"] = None
    text = report.render(tmp_path, bare).read_text()
    assert not (tmp_path / "latency.png").exists() and not (tmp_path / "list.png").exists()
    assert_png(tmp_path / "throughput.png")
    assert "latency.png" not in text and "list.png" not in text


def test_page_cost_falls_back_to_the_three_figures_of_an_older_run():
    results = synthetic_results()
    results.pop("curves")
    points = charts._list_points(results)
    assert sorted(points) == [10_000, 1_000_000]
    assert [p["position"] for p in points[1_000_000]] == [0, 500_000, 999_980]


@pytest.mark.skipif(not COMMITTED.exists(), reason="no committed results")
def test_python_m_bench_report_rerenders_a_runs_results_without_running(tmp_path):
    source = tmp_path / "results.json"
    source.write_text(COMMITTED.read_text())
    out = subprocess.run([sys.executable, "-m", "bench.report", str(source)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Charts" in text
    drawn = [name for name in charts.CHARTS if (tmp_path / name).exists()]
    assert drawn, "no chart drawn from the committed results"
    for name in drawn:
        assert_png(tmp_path / name)
        assert f"({name})" in text


def test_a_chart_that_fails_to_draw_costs_only_itself(tmp_path, monkeypatch):
    def broken(path, results):
        raise ValueError("a bug in one chart")

    monkeypatch.setattr(charts, "DRAW", ((charts.DRAW[0][0], charts.DRAW[0][1], broken), *charts.DRAW[1:]))
    text = report.render(tmp_path, synthetic_results()).read_text()
    assert not (tmp_path / charts.DRAW[0][0]).exists() and charts.DRAW[0][0] not in text
    assert_png(tmp_path / "throughput.png")
    assert "| figure | contacts | value | baseline | ratio | target | result |" in text
