"""The benchmark's figures as PNG charts, drawn from results.json alone.

`render(out_dir, results)` draws what the results hold and returns (file name, title) of every
chart drawn, for RESULTS.md to embed:

- latency.png: the latency distribution (CDF) of every figure that carries samples, one panel
  per section and number of clients, log-scale latency;
- throughput.png: /contacts.info per server against that server's HTTP ceiling;
- list.png: the cost of a page along the list, per size;
- growth.png: cold rebuild time and memory from the smallest size to the largest.

Targets are read from the figures' own target text ("< 50 ms", "> 2,000 req/s", "> 70% of the
ceiling"), so a changed target in bench/run.py moves its line without a change here.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from bench import report  # noqa: E402

log = logging.getLogger("bench")

CHARTS = ("latency.png", "throughput.png", "list.png", "growth.png")
DPI = 110
TARGET = dict(color="#d62728", linestyle="--", linewidth=1.2)
STYLES = ("-", "--", ":", "-.")  # by size: the largest solid
PERCENTILE_TICKS = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)

_BELOW = re.compile(r"^\s*<=?\s*([\d,.]+)\s*(ms|s|MB)\b")
_ABOVE = re.compile(r"^\s*>=?\s*([\d,.]+)\s*(req/s|contacts/s|conversations/s|records/s|commands/s)\b")
_SHARE = re.compile(r">=?\s*(\d+(?:\.\d+)?)%\s+of")
_POSITION = re.compile(r"at contact ([\d,]+) of ([\d,]+)")
_PERCENTILE = re.compile(r"\.p(\d+)(?=\.|$)")


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def target_below(figure: dict) -> float | None:
    """The bound of a target such as "< 15 ms" (in the figure's unit), else None."""
    m = _BELOW.match(figure.get("target") or "")
    return _number(m.group(1)) if m and m.group(2) == figure["unit"] else None


def target_above(figure: dict) -> float | None:
    m = _ABOVE.match(figure.get("target") or "")
    return _number(m.group(1)) if m and m.group(2) == figure["unit"] else None


def target_share(figure: dict) -> float | None:
    """"> 70% of the ceiling" -> 70."""
    m = _SHARE.search(figure.get("target") or "")
    return float(m.group(1)) if m else None


def _size_styles(sizes) -> dict:
    ordered = sorted({s for s in sizes if s is not None}, reverse=True)
    return {s: STYLES[min(i, len(STYLES) - 1)] for i, s in enumerate(ordered)}


def _count(x: float, _pos=None) -> str:
    if x >= 1_000_000:
        return f"{x / 1_000_000:g}M"
    if x >= 1000:
        return f"{x / 1000:g}k"
    return f"{x:g}"


def _ms(x: float, _pos=None) -> str:
    return f"{x:g}"


def _percentile_label(q: float, _pos=None) -> str:
    return f"p{q * 100:g}"


def _log_axis(axis, formatter) -> None:
    """Labels at 1, 2, 5 of every decade, all in the same plain notation (no 10^x beside 10k)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(formatter))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _subtitle(results: dict) -> str:
    m = results.get("machine", {})
    return f"{results.get('date', '')[:10]}, {m.get('cores', '?')} cores, {results.get('command', '')}"


# --- latency ---------------------------------------------------------------------------------------


def _panel_title(section: str, clients: int) -> str:
    titles = dict(report.SECTIONS)
    title = titles.get(section, section)
    title = re.sub(r",? \d+ concurrent clients", "", title)
    return f"{title}\n{'one client' if clients == 1 else f'{clients} concurrent clients'}"


def _latency_targets(figure: dict, figures: list[dict]) -> list[tuple[int, float]]:
    """(percentile, bound in ms) of the figure's latency siblings: the figure with samples and
    the figures that differ from its key only in the percentile (p50 carries the samples, p99
    the tighter target)."""
    m = _PERCENTILE.search(figure["key"])
    if not m:
        return []
    pattern = re.compile(re.escape(figure["key"][: m.start()]) + r"\.p(\d+)" + re.escape(figure["key"][m.end():]) + "$")
    out = []
    for f in figures:
        sibling = pattern.match(f["key"])
        bound = target_below(f) if sibling and f["unit"] == "ms" and f["size"] == figure["size"] else None
        if bound is not None:
            out.append((int(sibling.group(1)), bound))
    return out


def latency(path: Path, results: dict) -> bool:
    figures = results["figures"]
    with_samples = [f for f in figures if f.get("samples") and f["samples"].get("count")]
    if not with_samples:
        return False
    order = [s for s, _ in report.SECTIONS]
    panels: dict[tuple, list[dict]] = defaultdict(list)
    for f in with_samples:
        panels[(f["section"], f["samples"].get("clients", 1))].append(f)
    keys = sorted(panels, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[0], k[1]))
    columns = 2 if len(keys) > 1 else 1
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7.2 * columns, 4.6 * rows), squeeze=False)
    styles = _size_styles(f["size"] for f in with_samples)
    for ax, key in zip(axes.flat, keys):
        curves = panels[key]
        names = list(dict.fromkeys(f["samples"]["name"] for f in curves))
        palette = plt.get_cmap("tab10")
        colors = {name: palette(i % 10) for i, name in enumerate(names)}
        top = 0.99
        targets = set()
        for f in curves:
            s = f["samples"]
            n = s["count"]
            # Beyond 1 - 1/n a quantile is only the slowest request again.
            points = [(ms, q) for q, ms in zip(s["q"], s["ms"]) if 0 < q < 1 and q <= 1 - 1 / n and ms > 0]
            if not points:
                continue
            top = max(top, points[-1][1])
            baseline = s.get("baseline", False)
            ax.plot([p[0] for p in points], [p[1] for p in points], drawstyle="steps-post",
                    linestyle=styles.get(f["size"], "-"), linewidth=1.2 if baseline else 1.8,
                    color="#7f7f7f" if baseline else colors[s["name"]],
                    label=f"{s['name']}" + (f", {report._size(f['size'])} contacts" if f["size"] else "") + f" (n={n:,})")
            targets.update(_latency_targets(f, figures))
        for q, bound in sorted(targets):
            # Above the legend (zorder 5), which may share the empty upper left with a target.
            ax.plot([bound], [q / 100], marker="X", markersize=9, color=TARGET["color"], linestyle="none", zorder=10)
            ax.annotate(f"target p{q} < {bound:g} ms", (bound, q / 100), textcoords="offset points", xytext=(6, -12),
                        color=TARGET["color"], fontsize=8, zorder=10)
        ax.set_xscale("log")
        _log_axis(ax.xaxis, _ms)
        ax.set_yscale("logit")
        ticks = [t for t in PERCENTILE_TICKS if t <= top]
        ax.set_yticks(ticks)
        ax.yaxis.set_major_formatter(FuncFormatter(_percentile_label))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0.005, min(0.99995, top + (1 - top) / 2))
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("share of requests answered within (percentile)")
        ax.set_title(_panel_title(*key), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        if targets:
            ax.plot([], [], marker="X", color=TARGET["color"], linestyle="none", label="target (from the figure)")
        ax.legend(fontsize=7, loc="upper left")  # a CDF never reaches there: fast and at a high percentile
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"Latency distribution per endpoint (CDF)\n{_subtitle(results)}", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return True


# --- throughput against the HTTP ceiling -------------------------------------------------------------


def throughput(path: Path, results: dict) -> bool:
    figures = results["figures"]
    rps = [f for f in figures if re.fullmatch(r"info\.\w+\.rps", f["key"]) and f["key"] != "info.flask_ceiling.rps"]
    if not rps:
        return False
    servers = list(dict.fromkeys(f["key"].split(".")[1] for f in rps))
    sizes = sorted({f["size"] for f in rps})
    flask = next((f for f in figures if f["key"] == "info.flask_ceiling.rps"), None)
    reference = (results.get("parameters", {}).get("servers") or servers)[0]
    bars = ["ceiling"] + (["flask"] if flask else []) + sizes
    width = 0.8 / len(bars)
    palette = plt.get_cmap("Blues")
    fig, (ax, share) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    above = set()
    for i, server in enumerate(servers):
        mine = {f["size"]: f for f in rps if f["key"].split(".")[1] == server}
        any_figure = next(iter(mine.values()))
        for j, bar in enumerate(bars):
            x = i - 0.4 + width * (j + 0.5)
            if bar == "ceiling":
                value, color, label, hatch = any_figure["baseline"], "#bbbbbb", "HTTP ceiling (constant body, no store)", "//"
            elif bar == "flask":
                if server != reference:
                    continue
                value, color, label, hatch = flask["value"], "#e0c080", "Flask constant view (framework alone)", ".."
            else:
                f = mine.get(bar)
                if f is None:
                    continue
                value, hatch = f["value"], None
                color = palette(0.45 + 0.5 * sizes.index(bar) / max(1, len(sizes) - 1))
                label = f"/contacts.info at {report._size(bar)} contacts"
                bound = target_above(f)
                if bound is not None:
                    above.add(bound)
            ax.bar(x, value, width, color=color, hatch=hatch, edgecolor="#444444", linewidth=0.5, label=label)
            ax.annotate(f"{value:,.0f}", (x, value), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
        for k, size in enumerate(sizes):
            f = mine.get(size)
            if f is None:
                continue
            x = i - 0.4 + 0.8 / len(sizes) * (k + 0.5)
            share.bar(x, 100 * f["ratio"], 0.8 / len(sizes), color=palette(0.45 + 0.5 * k / max(1, len(sizes) - 1)),
                      edgecolor="#444444", linewidth=0.5, label=f"at {report._size(size)} contacts")
            share.annotate(f"{100 * f['ratio']:.0f}%", (x, 100 * f["ratio"]), textcoords="offset points", xytext=(0, 2),
                           ha="center", fontsize=8)
    for bound in sorted(above):
        ax.axhline(bound, **TARGET, label=f"target > {bound:,.0f} req/s")
    shares = {target_share(f) for f in rps} - {None}
    for bound in sorted(shares):
        share.axhline(bound, **TARGET, label=f"target > {bound:g}% of the ceiling")
    concurrency = results.get("parameters", {}).get("concurrency", 16)
    for a in (ax, share):
        a.set_xticks(range(len(servers)), servers)
        a.set_xlabel("HTTP server")
        a.grid(True, axis="y", alpha=0.3)
        handles, labels = a.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        a.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left")
    ax.set_yscale("log")
    _log_axis(ax.yaxis, _count)
    ax.set_ylabel("requests per second (log scale)")
    ax.set_title(f"/contacts.info throughput per server, {concurrency} clients, against its HTTP ceiling", fontsize=10)
    share.set_ylabel("share of the server's HTTP ceiling (%)")
    share.set_ylim(0, max(100, *(100 * f["ratio"] for f in rps)) * 1.15)
    share.set_title("the same as a share of the ceiling", fontsize=10)
    fig.suptitle(f"Throughput per server\n{_subtitle(results)}", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return True


# --- page cost along the list --------------------------------------------------------------------------


def _list_points(results: dict) -> dict[int, list[dict]]:
    """size -> [{position, total, p50, p99}] along the list: the run's curve, else (results of
    an older run) the start, middle and end figures."""
    by_size: dict[int, list[dict]] = defaultdict(list)
    for p in results.get("curves", {}).get("list.pages", []):
        by_size[p["size"]].append(p)
    if by_size:
        return {s: sorted(ps, key=lambda p: p["position"]) for s, ps in by_size.items()}
    figures = {(f["key"], f["size"]): f for f in results["figures"]}
    for (key, size), f in figures.items():
        m = re.fullmatch(r"list\.(\w+)\.p50", key)
        p99 = figures.get((f"list.{m.group(1)}.p99", size)) if m else None
        where = _POSITION.search(f["note"]) if m else None
        if where and p99:
            by_size[size].append({"position": _number(where.group(1)), "total": _number(where.group(2)), "p50": f["value"],
                                  "p99": p99["value"]})
    return {s: sorted(ps, key=lambda p: p["position"]) for s, ps in by_size.items()}


def page_cost(path: Path, results: dict) -> bool:
    points = _list_points(results)
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    styles = _size_styles(points)
    palette = {"p50": "#1f77b4", "p99": "#ff7f0e"}
    for size in sorted(points, reverse=True):
        ps = points[size]
        x = [100 * p["position"] / max(1, p["total"]) for p in ps]
        for q in ("p50", "p99"):
            ax.plot(x, [p[q] for p in ps], marker="o", markersize=4, linestyle=styles[size], color=palette[q],
                    label=f"{q}, {report._size(size)} contacts")
    largest = max(points)
    start = points[largest][0]
    if start["position"] == 0:
        ax.axhline(1.5 * start["p50"], **TARGET, label=f"target: p50 within 1.5x the first page ({report._size(largest)})")
    bounds = {target_below(f) for f in results["figures"] if re.fullmatch(r"list\.\w+\.p50", f["key"])} - {None}
    for bound in sorted(bounds):
        ax.axhline(bound, color=TARGET["color"], linestyle=":", linewidth=1.2, label=f"target p50 < {bound:g} ms")
    ax.set_xlim(-2, 102)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("where the page starts (% of the list, by display name)")
    ax.set_ylabel("latency of one page of 20 (ms), one client")
    ax.set_title(f"/contacts.list: cost of a page along the list\n{_subtitle(results)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


# --- growth with the store's size ------------------------------------------------------------------------


def growth(path: Path, results: dict) -> bool:
    figures = results["figures"]

    def series(key: str) -> list[dict]:
        return sorted((f for f in figures if f["key"] == key and f["size"]), key=lambda f: f["size"])

    rebuild, ready, rss = series("rebuild.seconds"), series("restart.ready"), series("memory.rss")
    if not (rebuild or rss):
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))

    def line(ax, fs, value, label, below=False, **style):
        if fs:
            xs, ys = [f["size"] for f in fs], [value(f) for f in fs]
            ax.plot(xs, ys, marker="o", label=label, **style)
            for x, y in zip(xs, ys):  # a baseline's numbers below its points, apart from the figure's
                ax.annotate(f"{y:,.3g}", (x, y), textcoords="offset points", xytext=(5, -12 if below else 4), fontsize=8)

    line(left, rebuild, lambda f: f["value"], "cold rebuild from the topic, start to ready", color="#1f77b4", linewidth=2)
    line(left, rebuild, lambda f: f["baseline"], "raw read_committed read of the topic", below=True, color="#7f7f7f",
         linestyle="--")
    line(left, ready, lambda f: f["value"], "ready after a restart (store kept)", color="#2ca02c")
    for f in rebuild + ready:
        bound = target_below(f)
        if bound is not None:
            left.plot([f["size"]], [bound], marker="_", markersize=30, markeredgewidth=2, color=TARGET["color"], linestyle="none",
                      label=f"target: rebuild < {bound:g} s (at {report._size(f['size'])})" if f["key"] == "rebuild.seconds"
                      else f"target: ready after a restart < {bound:g} s")
            left.annotate(f"< {bound:g} s", (f["size"], bound), textcoords="offset points", xytext=(18, -3), color=TARGET["color"],
                          fontsize=8)
    line(right, rss, lambda f: f["value"], "service RSS (process tree)", color="#9467bd", linewidth=2)
    line(right, rss, lambda f: f["baseline"], "same service, empty store", below=True, color="#7f7f7f", linestyle="--")
    for bound in sorted({target_below(f) for f in rss} - {None}):
        right.axhline(bound, **TARGET, label=f"target < {bound:g} MB")
    for ax in (left, right):
        ax.set_xscale("log")
        _log_axis(ax.xaxis, _count)
        ax.set_xlabel("contacts in the store (log scale)")
        ax.grid(True, which="major", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left")
        sizes = sorted({f["size"] for f in rebuild + rss})
        if sizes:
            ax.set_xlim(sizes[0] / 3, sizes[-1] * 3)
    left.set_yscale("log")
    _log_axis(left.yaxis, _ms)
    left.set_ylabel("seconds (log scale)")
    left.set_title("rebuild and restart time", fontsize=10)
    right.set_ylim(bottom=0)
    right.set_ylabel("resident memory (MB)")
    right.set_title("memory", fontsize=10)
    fig.suptitle(f"How rebuild time and memory grow with the store\n{_subtitle(results)}", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return True


DRAW = (
    ("latency.png", "Latency distribution per endpoint (CDF)", latency),
    ("throughput.png", "/contacts.info per server against its HTTP ceiling", throughput),
    ("list.png", "/contacts.list: page cost along the list", page_cost),
    ("growth.png", "Rebuild time and memory against the store's size", growth),
)


def render(out_dir: Path, results: dict) -> list[tuple[str, str]]:
    """Draw every chart the results have data for; a chart without data leaves no old file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, title, draw in DRAW:
        path = out_dir / name
        try:
            ok = draw(path, results)
        except Exception:  # a broken chart must not cost the tables of an hour's run
            log.exception("chart %s not drawn", name)
            plt.close("all")
            ok = False
        if ok:
            drawn.append((name, title))
        else:
            path.unlink(missing_ok=True)
    return drawn
