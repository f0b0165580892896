"""The paper's figures from a sweep: scaling panels, GenEval per tag, loss vs FLOPs, samples grid.

Every figure is written as PNG and PDF, each to a temporary name in the output folder and then
renamed over the target, so a reader never sees half a file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from PIL import Image  # noqa: E402

from analysis.fitting import FitRecord, preferred  # noqa: E402
from harness.registry import GENEVAL_TAGS, VARIANT_PAIRS  # noqa: E402

LABELS = {
    "val_loss": "validation loss", "fid": "FID", "geneval_overall": "GenEval overall",
    "params": "parameters", "train_flops": "training FLOPs",
    "trainable_params": "trainable parameters", "executed_flops": "executed training FLOPs",
} | {f"geneval_{t}": f"GenEval {t.replace('_', ' ')}" for t in GENEVAL_TAGS}
_MARKERS = {("discrete", "raster"): "s", ("discrete", "random"): "D",
            ("continuous", "raster"): "o", ("continuous", "random"): "^"}
_CELL_MAX_WIDTH = 1024


def variant_style(token: str, order: str) -> dict[str, object]:
    """Colour, marker and label of a variant, fixed so every figure uses the same legend."""
    palette = sns.color_palette("colorblind", len(VARIANT_PAIRS))
    index = VARIANT_PAIRS.index((token, order)) if (token, order) in VARIANT_PAIRS else 0
    return {"color": palette[index], "marker": _MARKERS.get((token, order), "o"),
            "label": f"{token}, {order}"}


def save_figure(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` atomically; close it; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        target = out_dir / f"{stem}.{ext}"
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".{ext}", dir=out_dir)
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(target)
    plt.close(fig)
    return paths


def _short(value: float) -> str:
    """3e6 -> 3M, 1.1e9 -> 1.1B; beyond 1e12 (FLOPs) scientific, 2e17 -> 2e17."""
    for scale, suffix in ((1e12, None), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value:.0e}".replace("e+", "e") if suffix is None else \
                f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _panel(ax: plt.Axes, obs: pd.DataFrame, records: Sequence[FitRecord], metric: str,
           x: str) -> None:
    """One metric vs ``x``: seed means (± seed sd), the preferred fit, and its 95% band."""
    sub = obs[obs["metric"] == metric]
    ax.set_xscale("log")
    if metric in ("val_loss", "fid"):
        ax.set_yscale("log")
    ax.set_xlabel(LABELS[x])
    ax.set_ylabel(LABELS.get(metric, metric))
    if sub.empty or not np.isfinite(sub[x]).any():
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        return
    for token, order in VARIANT_PAIRS:
        style = variant_style(token, order)
        part = sub[(sub["token"] == token) & (sub["order"] == order) & np.isfinite(sub[x])]
        if part.empty:
            continue
        pts = part.groupby("size").agg(x=(x, "mean"), y=("value", "mean"), sd=("value", "std"))
        ax.errorbar(pts["x"], pts["y"], yerr=pts["sd"].fillna(0.0), fmt=style["marker"],
                    color=style["color"], label=style["label"], capsize=2, ms=5, lw=1)
        rec = preferred(records, metric, token, order, x)
        if rec is None:
            continue
        lo_x, hi_x = rec.fit.sizes_x.min(), rec.fit.sizes_x.max()
        grid = np.geomspace(lo_x / 1.3, hi_x * 1.3, 80)
        ax.plot(grid, rec.fit.predict(grid), color=style["color"], lw=1.2)
        band_lo, band_hi = rec.boot.predict_interval(grid)
        if np.isfinite(band_lo).all() and np.isfinite(band_hi).all():
            ax.fill_between(grid, band_lo, band_hi, color=style["color"], alpha=0.15, lw=0)
    _log_ticks(ax)


def _log_ticks(ax: plt.Axes) -> None:
    """Label 1-2-5 steps on log axes spanning under three decades (else decades only)."""
    axes = [ax.xaxis] + ([ax.yaxis] if ax.get_yscale() == "log" else [])
    for axis, limits in zip(axes, (ax.get_xlim(), ax.get_ylim())):
        if np.log10(limits[1] / limits[0]) < 3:
            subs = (1.0, 2.0, 5.0) if axis is ax.xaxis else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
            axis.set_major_locator(LogLocator(subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
        axis.set_minor_formatter(NullFormatter())


def _figure(obs, records, metrics, x, ncols, title):
    nrows = int(np.ceil(len(metrics) / ncols))
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.0, 3.4 * nrows),
                                 squeeze=False)
        for ax, metric in zip(axes.flat, metrics):
            _panel(ax, obs, records, metric, x)
        for ax in list(axes.flat)[len(metrics):]:
            ax.set_visible(False)
        handles, labels = [], []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if handles:
            fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 2 * ncols),
                       bbox_to_anchor=(0.5, 1.0 + 0.06 / nrows), frameon=False)
        fig.suptitle(title, y=1.0 + 0.12 / nrows)
        fig.tight_layout()
    return fig


def scaling_figure(obs: pd.DataFrame, records: Sequence[FitRecord], x: str,
                   out_dir: Path) -> list[Path]:
    """The paper's scaling figure: validation loss, FID and GenEval overall vs size."""
    fig = _figure(obs, records, ["val_loss", "fid", "geneval_overall"], x, 3,
                  "Scaling with fitted curves and 95% bootstrap bands")
    return save_figure(fig, out_dir, "scaling")


def geneval_tags_figure(obs: pd.DataFrame, records: Sequence[FitRecord], x: str,
                        out_dir: Path) -> list[Path]:
    """GenEval's six tags vs size, one panel each."""
    fig = _figure(obs, records, [f"geneval_{t}" for t in GENEVAL_TAGS], x, 3,
                  "GenEval per tag")
    return save_figure(fig, out_dir, "geneval_tags")


def loss_vs_flops_figure(obs: pd.DataFrame, records: Sequence[FitRecord],
                         out_dir: Path) -> list[Path]:
    """Validation loss vs training FLOPs with the FLOPs fits."""
    fig = _figure(obs, records, ["val_loss"], "train_flops", 1, "Validation loss vs compute")
    return save_figure(fig, out_dir, "loss_vs_flops")


def _load_cell(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > _CELL_MAX_WIDTH:
            im = im.resize((_CELL_MAX_WIDTH, max(1, round(im.height * _CELL_MAX_WIDTH / im.width))))
        return np.asarray(im)


def samples_figure(cells: Mapping[tuple[str, str, str], Path | None], sizes: Sequence[str],
                   out_dir: Path) -> tuple[list[Path], list[str]]:
    """Grid of each run's fixed-prompt strip: sizes as columns, variants as rows.

    ``cells`` maps (token, order, size) to the strip's path, or None when the run has none;
    those cells are left blank and named in the returned messages.
    """
    messages = []
    images: dict[tuple[str, str, str], np.ndarray] = {}
    for key, path in cells.items():
        if path is None or not Path(path).is_file():
            messages.append(f"samples: no fixed_prompts.png for {key[0]}/{key[1]} {key[2]}"
                            + (f" ({path})" if path is not None else ""))
            continue
        try:
            images[key] = _load_cell(Path(path))
        except OSError as e:
            messages.append(f"samples: cannot read {path}: {e}")
    rows = [v for v in VARIANT_PAIRS if any(k[:2] == v for k in cells)]
    aspect = max((im.shape[1] / im.shape[0] for im in images.values()), default=4.0)
    cell_w = 3.2 if aspect < 3 else 5.0
    with sns.axes_style("white"):
        fig, axes = plt.subplots(max(len(rows), 1), max(len(sizes), 1), squeeze=False,
                                 figsize=(cell_w * max(len(sizes), 1),
                                          (cell_w / aspect + 0.4) * max(len(rows), 1)))
        for i, (token, order) in enumerate(rows):
            for j, size in enumerate(sizes):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                image = images.get((token, order, size))
                if image is not None:
                    ax.imshow(image)
                else:
                    ax.text(0.5, 0.5, "missing", transform=ax.transAxes, ha="center",
                            va="center", color="0.5")
                if i == 0:
                    ax.set_title(size)
                if j == 0:
                    ax.set_ylabel(f"{token}\n{order}")
        if not rows:
            axes[0, 0].text(0.5, 0.5, "no completed runs", ha="center", va="center")
            axes[0, 0].axis("off")
        fig.tight_layout()
    return save_figure(fig, out_dir, "samples"), messages
