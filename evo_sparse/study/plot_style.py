"""What every figure shares: colour-blind-safe colours and distinct markers per kind and algorithm, dodged points,
means with 95% t-intervals, the captions' n and training length, parameter sparsity, and saving (PNG + PDF + JSON).

Colours are the Okabe–Ito palette (Okabe & Ito 2008), told apart under the common colour-vision deficiencies; every
kind and algorithm also has its own marker, so nothing is told by colour alone.
"""

from __future__ import annotations

import math
import textwrap
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from evo_sparse.foundations.storage import write_json
from evo_sparse.stats import analysis

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}
STYLES = {  # name: (colour, marker)
    "found": (OKABE_ITO["vermillion"], "o"),
    "random": (OKABE_ITO["blue"], "s"),
    "dense": (OKABE_ITO["black"], "D"),
    "ga": (OKABE_ITO["orange"], "^"),
    "weedout": (OKABE_ITO["bluish green"], "v"),
}
SPARE_COLORS = (OKABE_ITO["reddish purple"], OKABE_ITO["sky blue"], OKABE_ITO["yellow"])
SPARE_MARKERS = ("P", "X", "*", "h", "<", ">")
CYCLE = tuple(c for name, c in OKABE_ITO.items() if name not in ("black", "yellow"))  # lines with no kind
CHAR_WIDTH = 0.58  # a title character's mean width in units of its font size (DejaVu Sans, with margin)
REFERENCE_COLOR = "#555555"  # the Random Search reference and noise references: grey, dashed


def color(name: str) -> str:
    """The colour of a kind or algorithm; another name gets a spare Okabe–Ito colour fixed by the name."""
    return STYLES[name][0] if name in STYLES else SPARE_COLORS[zlib.crc32(name.encode()) % len(SPARE_COLORS)]


def marker(name: str) -> str:
    """The marker of a kind or algorithm; another name gets a spare marker fixed by the name."""
    return STYLES[name][1] if name in STYLES else SPARE_MARKERS[zlib.crc32(name.encode()) % len(SPARE_MARKERS)]


def save(fig: Figure, out: Path, name: str, sources: list[str], data: Any, **meta: Any) -> Path:
    """``fig`` as ``<name>.png``, ``.pdf`` (no creation date) and a ``.json`` sidecar (the sources, the figure's
    ``captions``: its titles, and ``legend``: its legend entries, then ``meta`` and ``data``); the PNG's path."""
    out.mkdir(parents=True, exist_ok=True)
    captions = [t.get_text() for t in fig.texts] + [ax.get_title() for ax in fig.axes if ax.get_title()]
    fit_titles(fig)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=150)
    fig.savefig(out / f"{name}.pdf", metadata={"CreationDate": None})
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    text = {"captions": captions, "legend": legend}
    sidecar = {"figure": name, "sources": sorted(set(sources)), **text, **meta, "data": data}
    write_json(out / f"{name}.json", finite(sidecar))
    return out / f"{name}.png"


def fit_titles(fig: Figure) -> None:
    """Re-wrap the figure's titles (suptitle, axes titles) at word boundaries to the width they have, so that a long
    caption over one narrow panel is not cut off at the figure's edge; the line breaks a title has are kept."""
    width = fig.get_figwidth() * 72  # points
    titles = [(t, width) for t in fig.texts] + [(ax.title, width * ax.get_position().width) for ax in fig.axes]
    for text, points in titles:
        chars = max(20, int(points / (CHAR_WIDTH * text.get_fontsize())))
        text.set_text("\n".join(textwrap.fill(line, chars) for line in text.get_text().split("\n")))


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (a mean of nothing, a gap in a curve) as None, as JSON allows."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def sources_of(rows) -> list[str]:
    return [str(r.get("source")) for r in rows]


def legend_in_headroom(ax, fontsize: float = 7, share: float = 0.3) -> None:
    """The axes' legend in room added above its points (``share`` of the data's height), so that it hides none."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + share * (high - low))
    ax.legend(fontsize=fontsize, loc="upper center")


def mean_ci(values) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean (``analysis.curve_band``); low = high = mean below 2 values."""
    band = analysis.curve_band([[v] for v in values])
    mean, low, high = band["mean"][0], band["low"][0], band["high"][0]
    return (mean, mean, mean) if low is None or high is None else (mean, low, high)


def nan_array(values) -> np.ndarray:
    """Floats with None as NaN (matplotlib leaves gaps there)."""
    return np.array([math.nan if v is None else v for v in values], float)


def dodge(n: int, width: float) -> np.ndarray:
    """``n`` offsets spread evenly over ``width`` around 0 (0 for one point): points side by side, never on top of
    each other, and the same offsets for the same data."""
    return np.linspace(-width / 2, width / 2, n) if n > 1 else np.zeros(n)


def side_by_side(xs, ys, step: float) -> np.ndarray:
    """Offsets along x that set points with equal (x, y) side by side, ``step`` apart (0 for a point alone)."""
    keys = list(zip(xs, ys))
    groups = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    out = np.zeros(len(keys))
    for idx in groups.values():
        out[idx] = dodge(len(idx), step * (len(idx) - 1))
    return out


def count_text(counts) -> str:
    """``"6"`` or ``"5–6"`` (``"4,096"``): the range of some n."""
    counts = sorted(set(counts))
    if not counts:
        return "0"
    return f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}–{counts[-1]:,}"


def epochs_text(rows: list[dict[str, Any]]) -> str:
    """The final training's length, ``"3 epochs"`` (or ``"3–10 epochs"``), from the rows' ``epochs`` (else the length
    of their validation curves, one value per epoch)."""
    epochs = {r.get("epochs") or len(r.get("val_acc") or []) for r in rows} - {0}
    return f"{count_text(epochs)} epoch{'' if epochs == {1} else 's'}" if epochs else "final training"


def param_sparsity(rows: list[dict[str, Any]]) -> dict[float, float | None]:
    """Per node sparsity, the parameter sparsity: 1 - mean parameters of its networks / the dense network's (None for
    every level without a dense row)."""
    params = defaultdict(list)
    for r in rows:
        if r.get("params") is not None:
            params[0.0 if r["kind"] == "dense" else r["sparsity"]].append(r["params"])
    dense = [r["params"] for r in rows if r["kind"] == "dense" and r.get("params")]
    full = float(np.mean(dense)) if dense else None
    return {s: (None if full is None else 1 - float(np.mean(p)) / full) for s, p in params.items()}


def sparsity_label(s: float, fractions: dict[float, float | None], sep: str = " ") -> str:
    """``"0.8 (0.95 params)"``: node sparsity and its parameter sparsity (``param_sparsity``) if known; 0 is dense."""
    p = fractions.get(s)
    if s == 0:
        return f"0{sep}(dense)"
    return f"{s:g}" if p is None else f"{s:g}{sep}({p:.2f} params)"


def brief_trainings(summaries: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """The training images of one brief training and the replicates a fitness averages, each sorted and distinct, over
    runs' summaries (``runs.run.summarize``): what a caption says a fitness value is."""
    images = {s["train_images_per_eval"] // s.get("replicates", 1) for s in summaries if s.get("train_images_per_eval")}
    return sorted(images), sorted({s.get("replicates", 1) for s in summaries})


def evaluation_text(comparison: dict[str, Any]) -> str:
    """What one fitness evaluation of a comparison trained: ``"2 trainings of 2,048 images"`` (a comparison written
    before it recorded ``replicates`` holds the images of one replicate's training only)."""
    r = comparison.get("replicates")
    per = comparison["train_images_per_eval"] // (r or 1)
    if r is None:
        return f"{per:,} training images per replicate"
    return f"{r} trainings of {per:,} images" if r > 1 else f"one training of {per:,} images"


def bars(values: list[float], cis: list) -> list[list[float]]:
    """Error bars (below, above) from 95% intervals; never negative, as a point estimate may lie a rounding step
    outside its bootstrap interval (a Kendall tau of -0.9999999999999999 with the interval [-1, -1])."""
    return [[max(0.0, v - c[0]) for v, c in zip(values, cis)], [max(0.0, c[1] - v) for v, c in zip(values, cis)]]
