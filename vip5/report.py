"""A run's static HTML report: plots drawn with matplotlib (Agg) as PNG files next to one index.html.

    ReportData (plain data: the recommendations a run received, its summary, its quality figure)
        -> write_report(data, out_dir) -> ReportFiles(index=out_dir/index.html, plots={name: PNG path})

Plots, each drawn whatever the run collected (an empty one says so rather than going missing):

    freshness            freshness (publish_time_ms - event_time_ms) of every recommendation over the run
    freshness_histogram  its distribution, p50 and p99 marked
    adapter_versions     recommendations per adapter version over the run (hot swaps show as a hand-over)
    quality              the run's quality figure next to its baselines; only when the run has one
                         (the page says so when it has not)
    stage_latency        per-stage p50/p99 (vip5.latency) where the records carry the stage stamps
    recommendations      a few recommendations as the product photos they name (a tile with the
                         caption where an item has no photo)

The callers (`vip5 demo --report`, `vip5 bench pipeline|replay --report`) build ReportData; this
module knows nothing of Kafka or the model, and imports matplotlib only when it draws.
"""

from __future__ import annotations

import html
import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vip5.latency import STAGE_NAMES, summarize

SHOWN_RECOMMENDATIONS = 4  # rows of photos: enough to judge by eye, small enough to load fast
SHOWN_ITEMS = 5  # top items per shown recommendation


@dataclass(frozen=True)
class ServedRecommendation:
    """What a run received for one recommendation: who, which items, which adapter, when."""

    user_id: str
    item_ids: tuple[str, ...]  # ranked, best first
    adapter_version: str
    event_time_ms: int
    publish_time_ms: int
    stages: Mapping[str, int] = field(default_factory=dict)  # vip5.latency.stages_of

    @classmethod
    def of(cls, rec, stages: Mapping[str, int] | None = None) -> ServedRecommendation:
        """From a schemas.records.Recommendation (and its stage times, if measured)."""
        return cls(user_id=rec.user_id, item_ids=tuple(i.item_id for i in rec.items),
                   adapter_version=rec.adapter_version, event_time_ms=rec.event_time_ms,
                   publish_time_ms=rec.publish_time_ms, stages=dict(stages or {}))

    @property
    def freshness_ms(self) -> int:
        return self.publish_time_ms - self.event_time_ms


@dataclass(frozen=True)
class QualityFigure:
    """One metric for the run and its baselines: `values` maps a label to the metric, the run first."""

    metric: str  # what the numbers are, e.g. "HR@10"
    values: Mapping[str, float]
    note: str = ""  # how to read it

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("QualityFigure.values: needs the run's value at least")


@dataclass(frozen=True)
class CatalogueItem:
    caption: str  # what the reader judges the item by (the demo: its article type)
    image_path: Path | None = None


@dataclass(frozen=True)
class ReportData:
    title: str
    recommendations: Sequence[ServedRecommendation]
    summary: Mapping[str, object] = field(default_factory=dict)  # the run's printed summary
    quality: QualityFigure | None = None
    no_quality_reason: str = "this run measures no recommendation quality"
    catalogue: Mapping[str, CatalogueItem] = field(default_factory=dict)
    user_notes: Mapping[str, str] = field(default_factory=dict)  # user id -> what to judge the list against


@dataclass(frozen=True)
class ReportFiles:
    index: Path
    plots: Mapping[str, Path]


def write_report(data: ReportData, out_dir: Path) -> ReportFiles:
    """Draw every plot into out_dir and write out_dir/index.html, which shows them."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and the same pixels on every machine
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = sorted(data.recommendations, key=lambda r: r.publish_time_ms)
    drawers = {"freshness": (plot_freshness, "Freshness over the run"),
               "freshness_histogram": (plot_freshness_histogram, "Freshness distribution"),
               "adapter_versions": (plot_adapter_versions, "Recommendations per adapter version")}
    if data.quality is not None:
        drawers["quality"] = (lambda _recs: plot_quality(data.quality), "Quality next to baselines")
    if any(r.stages for r in recs):
        drawers["stage_latency"] = (plot_stage_latency, "Where the time goes")
    drawers["recommendations"] = (lambda recs_: plot_photos(recs_, data), "A few recommendations")
    plots, sections = {}, []
    for name, (draw, heading) in drawers.items():
        figure, caption = draw(recs)
        plots[name] = out_dir / f"{name}.png"
        figure.savefig(plots[name], dpi=100)
        _close(figure)
        sections.append((heading, plots[name].name, caption))
    index = out_dir / "index.html"
    index.write_text(_page(data, sections))
    return ReportFiles(index=index, plots=plots)


def _close(figure) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def _figure(width_in: float = 8.0, height_in: float = 3.4):
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(width_in, height_in), layout="constrained")
    return figure, ax


def _run_seconds(recs: Sequence[ServedRecommendation]) -> np.ndarray:
    """Publish times in seconds since the run's first event."""
    if not recs:
        return np.zeros(0)
    start = min(r.event_time_ms for r in recs)
    return np.asarray([(r.publish_time_ms - start) / 1000 for r in recs])


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this run", ha="center", va="center", transform=ax.transAxes)


def plot_freshness(recs: Sequence[ServedRecommendation]):
    figure, ax = _figure()
    t, fresh = _run_seconds(recs), np.asarray([r.freshness_ms for r in recs])
    if len(recs):
        ax.scatter(t, fresh, s=10, alpha=0.5, label="one recommendation")
        window = max(1, len(fresh) // 10)
        if len(fresh) >= window > 1:  # rolling median: the trend through the scatter
            rolled = np.median(np.lib.stride_tricks.sliding_window_view(fresh, window), axis=1)  # (N - W + 1,)
            ax.plot(t[window - 1:], rolled, color="C3", label=f"median of the last {window}")
        ax.legend(loc="upper left")
    else:
        _empty(ax, "recommendations")
    ax.set(xlabel="seconds since the run's first event", ylabel="freshness (ms)")
    ax.grid(alpha=0.3)
    return figure, "publish time minus event time of each recommendation, by when it was published"


def plot_freshness_histogram(recs: Sequence[ServedRecommendation]):
    figure, ax = _figure()
    fresh = np.asarray([r.freshness_ms for r in recs])
    if len(fresh):
        ax.hist(fresh, bins=min(40, max(5, len(fresh) // 4)), color="C0", alpha=0.8)
        for q, style in ((50, "--"), (99, ":")):
            value = float(np.percentile(fresh, q))
            ax.axvline(value, color="C3", linestyle=style, label=f"p{q} {value:.0f} ms")
        ax.legend()
    else:
        _empty(ax, "recommendations")
    ax.set(xlabel="freshness (ms)", ylabel="recommendations")
    ax.grid(alpha=0.3)
    return figure, f"{len(fresh)} recommendations"


def plot_adapter_versions(recs: Sequence[ServedRecommendation]):
    figure, ax = _figure()
    t = _run_seconds(recs)
    versions = sorted({r.adapter_version for r in recs})
    if versions:
        bins = np.linspace(0, max(float(t.max()), 1e-3), min(30, max(5, len(recs) // 5)) + 1)
        times = [t[[r.adapter_version == v for r in recs]] for v in versions]
        ax.hist(times, bins=bins, stacked=True, label=versions)
        ax.legend(title="adapter version")
    else:
        _empty(ax, "recommendations")
    ax.set(xlabel="seconds since the run's first event", ylabel="recommendations")
    ax.grid(alpha=0.3)
    counts = ", ".join(f"{v}: {sum(r.adapter_version == v for r in recs)}" for v in versions)
    return figure, f"the adapter version that served each recommendation ({counts or 'none'})"


def plot_quality(quality: QualityFigure):
    figure, ax = _figure(height_in=0.6 * len(quality.values) + 1.2)
    labels, values = list(quality.values), list(quality.values.values())
    colors = ["C2"] + ["0.6"] * (len(values) - 1)  # the run in colour, baselines grey
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    for y, value in enumerate(values[::-1]):
        ax.text(value, y, f" {value:.3f}", va="center")
    ax.set(xlabel=quality.metric, xlim=(0, max(max(values), 1e-9) * 1.2))
    ax.grid(axis="x", alpha=0.3)
    return figure, quality.note


def plot_stage_latency(recs: Sequence[ServedRecommendation]):
    figure, ax = _figure()
    stats = summarize(r.stages for r in recs)
    names = [n for n in (*STAGE_NAMES, "freshness", "delivered") if n in stats]
    x = np.arange(len(names))
    for offset, key, color in ((-0.2, "p50_ms", "C0"), (0.2, "p99_ms", "C1")):
        ax.bar(x + offset, [stats[n][key] for n in names], width=0.4, color=color, label=key.replace("_ms", ""))
    ax.set_xticks(x, names, rotation=20)
    ax.set_yscale("symlog", linthresh=1)  # ms-long hops next to seconds-long totals; 0 ms stays drawable
    ax.set(ylabel="ms (log scale)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return figure, "per stage, from the stage times the records carry (vip5.latency)"


def shown_recommendations(recs: Sequence[ServedRecommendation], limit: int = SHOWN_RECOMMENDATIONS):
    """The latest recommendation of each of the last `limit` users served (latest adapter, most history)."""
    shown, users = [], set()
    for rec in reversed(recs):
        if rec.user_id not in users and rec.item_ids:
            shown.append(rec)
            users.add(rec.user_id)
        if len(shown) == limit:
            break
    return shown


def plot_photos(recs: Sequence[ServedRecommendation], data: ReportData):
    import matplotlib.pyplot as plt

    shown = shown_recommendations(recs)
    figure = plt.figure(figsize=(1.7 * SHOWN_ITEMS, 2.2 * max(1, len(shown))), layout="constrained")
    if not shown:
        _empty(figure.add_subplot(), "recommendations")
    rows = figure.subfigures(len(shown), 1, squeeze=False)[:, 0] if shown else []
    for row, rec in zip(rows, shown, strict=True):
        row.suptitle(f"{rec.user_id} {data.user_notes.get(rec.user_id, '')}".strip(), x=0.02, ha="left",
                     fontsize=9)
        for rank, ax in enumerate(row.subplots(1, SHOWN_ITEMS), start=1):
            ax.set(xticks=[], yticks=[])
            if rank <= len(rec.item_ids):
                _draw_item(ax, rank, rec.item_ids[rank - 1], data.catalogue.get(rec.item_ids[rank - 1]))
            else:
                ax.set_axis_off()
    return figure, "top items of the latest recommendation of a few users, best first"


def _draw_item(ax, rank: int, item_id: str, item: CatalogueItem | None) -> None:
    caption = item.caption if item else item_id
    if item is not None and item.image_path is not None and Path(item.image_path).exists():
        from PIL import Image

        with Image.open(item.image_path) as image:
            ax.imshow(np.asarray(image.convert("RGB")))  # (H, W, 3)
    else:  # no photo: the caption stands in for it
        ax.text(0.5, 0.5, textwrap.fill(caption, 18, max_lines=5), ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ax.set_title(f"{rank}. {caption[:24]}", fontsize=7)


def _page(data: ReportData, sections: list[tuple[str, str, str]]) -> str:
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(str(k))}</th><td><code>{esc(_short(v))}</code></td></tr>"
                   for k, v in data.summary.items())
    quality = "" if data.quality else f'<p class="note">No quality figure: {esc(data.no_quality_reason)}.</p>'
    figures = "".join(f'<section><h2>{esc(h)}</h2><img src="{esc(src)}" alt="{esc(h)}"><p>{esc(c)}</p></section>'
                      for h, src, c in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(data.title)}</title>'
            "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
            "img{max-width:100%}th{text-align:left;padding-right:1em;vertical-align:top}"
            "td code{white-space:pre-wrap}.note{background:#fff4d6;padding:.5em}</style></head><body>"
            f"<h1>{esc(data.title)}</h1><table>{rows}</table>{quality}{figures}</body></html>\n")


def _short(value: object, limit: int = 400) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + " ..."
