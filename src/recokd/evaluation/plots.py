"""PNG figures: per-class Dice box plots, a case overlay, and Dice against latency.

matplotlib (the ``plots`` extra) is imported inside the functions and used through its Agg canvas
only (no ``pyplot``, no display needed). Every function refuses to replace an existing file unless
``overwrite=True`` and returns the path it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recokd.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from recokd.evaluation.evaluate import EvaluationResult

__all__ = ["default_slice", "dice_boxplot", "dice_vs_latency", "overlay_png", "show_case"]


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure of ``width`` x ``height`` inches on the Agg canvas (no display needed); a clear
    error if matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the installation
        raise UserError("plots need matplotlib: pip install 'reco-kd[plots]'") from None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_png: str | Path, overwrite: bool) -> Path:
    """Write ``fig`` as ``out_png`` (a .png name; an existing file only with ``overwrite``); returns
    the path."""
    from recokd.evaluation.evaluate import check_writable

    out = Path(out_png)
    if out.suffix.lower() != ".png":
        raise UserError(f"output: expected a .png file name, got {out}")
    check_writable([out], overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    from recokd.atomic_files import atomic_path

    with atomic_path(out) as partial:
        fig.savefig(partial, format="png")
    return out


def dice_boxplot(result: EvaluationResult, out_png: str | Path, overwrite: bool = False) -> Path:
    """One box per class of the per-case Dice (cases as dots), foreground classes in label order."""
    names = list(result.labels)
    data = [result.values("dice", n) for n in names]
    fig = new_figure(max(4.0, 0.9 * len(names) + 1.5), 4.0)
    ax = fig.add_subplot()
    ax.boxplot(data, showmeans=True, widths=0.6)
    rng = np.random.default_rng(0)  # fixed jitter: the same result gives the same picture
    for i, values in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=10, alpha=0.6, color="0.25", zorder=3)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30 if len(names) > 4 else 0, ha="right"
                  if len(names) > 4 else "center")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice per case")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Dice per class ({len(result.cases)} cases; empty masks: {result.convention.name})",
                 fontsize=9)
    return save_figure(fig, out_png, overwrite)


def default_slice(gt: np.ndarray, pred: np.ndarray) -> int:
    """Index along the first axis with the most ground-truth foreground (else prediction, else middle)."""
    for seg in (gt, pred):
        counts = (seg.reshape(seg.shape[0], -1) > 0).sum(axis=1)
        if counts.max() > 0:
            return int(np.argmax(counts))
    return gt.shape[0] // 2


def _colours(values: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(values) <= 10 else "tab20"]
    return {v: tuple(cmap(i % cmap.N)[:3]) for i, v in enumerate(values)}  # type: ignore[misc]


def overlay_png(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                out_png: str | Path, *, slice_index: int | None = None,
                class_names: Mapping[int, str] | None = None, title: str = "",
                window: tuple[float, float] | None = None, overwrite: bool = False) -> Path:
    """Image, ground truth over the image and prediction over the image, one slice side by side.

    Arrays are ``(z, y, x)`` (numpy order, same shape) and ``spacing`` ``(z, y, x)`` mm sets the
    pixel aspect ratio. ``slice_index`` defaults to :func:`default_slice`; ``window`` is the grey
    range ``(low, high)`` (e.g. ``(-160, 240)`` HU for CT soft tissue), by default the slice's
    0.5th to 99.5th percentile.
    """
    if not (image.shape == gt.shape == pred.shape) or image.ndim != 3:
        raise UserError(f"show: image, ground truth and prediction must be 3D arrays of one shape, got "
                        f"{image.shape}, {gt.shape}, {pred.shape}")
    z = default_slice(gt, pred) if slice_index is None else slice_index
    if not 0 <= z < image.shape[0]:
        raise UserError(f"slice: expected an index in 0..{image.shape[0] - 1} (first array axis), got {z}")
    img = image[z].astype(np.float32)
    if window is not None:
        lo, hi = (float(w) for w in window)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise UserError(f"window: expected two numbers low < high, got {window!r}")
    else:
        lo, hi = (float(v) for v in np.percentile(img, [0.5, 99.5]))
    values = sorted((set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())) - {0})
    colours = _colours(values)
    names = dict(class_names or {})
    aspect = float(spacing[1]) / float(spacing[2])

    fig = new_figure(12.0, 4.6)
    axes = fig.subplots(1, 3)
    for ax, seg, label in zip(axes, (None, gt, pred), ("image", "ground truth", "prediction"), strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect,
                  interpolation="nearest")
        if seg is not None:
            sl = seg[z]
            rgba = np.zeros((*sl.shape, 4), dtype=np.float32)
            for v, c in colours.items():
                rgba[sl == v] = (*c, 0.5)
            ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        ax.set_title(f"{label} (slice {z})" if seg is None else label, fontsize=10)
        ax.set_axis_off()
    present = [v for v in values if (gt[z] == v).any() or (pred[z] == v).any()]
    if present:
        from matplotlib.patches import Patch

        handles = [Patch(color=colours[v], label=f"{v}: {names.get(v, str(v))}") for v in present]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_png, overwrite)


def _file_ending(path: Path) -> str:
    from recokd.evaluation.evaluate import known_file_endings

    ending = next((e for e in known_file_endings() if path.name.lower().endswith(e)), None)
    if ending is None:
        raise UserError(f"{path}: unknown file ending; expected one of {', '.join(known_file_endings())}")
    return ending


def show_case(image: str | Path, gt: str | Path, pred: str | Path, out_png: str | Path, *,
              slice_index: int | None = None, dataset_json: str | Path | None = None,
              window: tuple[float, float] | None = None, overwrite: bool = False) -> Path:
    """Read one case with nnU-Net's readers and write :func:`overlay_png` (channel 0 of the image).

    ``dataset_json`` (optional) names the classes in the legend.
    """
    import json

    from recokd.evaluation.evaluate import labels_from_dataset_json, read_segmentation

    paths = [Path(p).expanduser() for p in (image, gt, pred)]
    for what, p in zip(("image", "gt", "pred"), paths, strict=True):
        if not p.is_file():
            raise UserError(f"{what}: {p} is not a file")
    names: dict[int, str] = {}
    if dataset_json is not None:
        dj_path = Path(dataset_json).expanduser()
        try:
            content = json.loads(dj_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"dataset_json: cannot read {dj_path} as JSON ({e})") from None
        labels = labels_from_dataset_json(content, str(dj_path))
        names = {v: k for k, v in labels.items() if isinstance(v, int)}
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    readers = [determine_reader_writer_from_file_ending(_file_ending(p), verbose=False)() for p in paths]
    try:
        img, props = readers[0].read_images([str(paths[0])])
    except Exception as e:  # backend errors
        raise UserError(f"image: cannot read {paths[0]} ({e})") from None
    g, g_spc = read_segmentation(readers[1], paths[1])
    p, _ = read_segmentation(readers[2], paths[2])
    for what, path, arr in (("gt", paths[1], g), ("pred", paths[2], p)):
        if arr.shape != img.shape[1:]:
            raise UserError(f"{what}: {path} has shape {arr.shape} but the image {paths[0]} "
                            f"has {img.shape[1:]}")
    spacing = [float(s) for s in props["spacing"]]
    title = (f"prediction {paths[2].parent.name}/{paths[2].name} vs "
             f"ground truth {paths[1].parent.name}/{paths[1].name}")
    return overlay_png(np.asarray(img[0]), g, p, spacing, out_png, slice_index=slice_index, class_names=names,
                       title=title, window=window, overwrite=overwrite)


def _point(i: int, point: Any) -> tuple[str, float, float]:
    if isinstance(point, Mapping):
        try:
            name = point.get("name", point.get("model"))
            point = (name, point["latency_s"], point["dice"])
        except KeyError as e:
            raise UserError(f"points[{i}]: missing key {e}; expected name, latency_s, dice") from None
    try:
        name, latency, dice = point
        latency, dice = float(latency), float(dice)
    except (TypeError, ValueError):
        raise UserError(f"points[{i}]: expected (model name, latency in s, mean Dice), "
                        f"got {point!r}") from None
    if not (math.isfinite(latency) and latency > 0):
        raise UserError(f"points[{i}] ({name}): latency must be a positive number of seconds, got {latency}")
    if not (math.isfinite(dice) and 0 <= dice <= 1):
        raise UserError(f"points[{i}] ({name}): mean Dice must be in [0, 1], got {dice}")
    return str(name), latency, dice


def dice_vs_latency(points: Sequence[Any], out_png: str | Path, *, title: str = "",
                    latency_label: str = "latency per case (s, wall clock, median)",
                    overwrite: bool = False) -> Path:
    """Scatter of mean Dice against latency, one labelled point per model.

    ``points``: ``(model name, latency seconds, mean Dice)`` tuples or mappings with keys ``name``
    (or ``model``), ``latency_s`` and ``dice``. The latency axis is logarithmic when the latencies
    span more than a factor of 20. State device, threads and test-time augmentation in ``title``.
    """
    pts = [_point(i, p) for i, p in enumerate(points)]
    if not pts:
        raise UserError("points: expected at least one (model name, latency in s, mean Dice)")
    fig = new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    lat = [p[1] for p in pts]
    for name, latency, dice in pts:
        ax.scatter([latency], [dice], s=40, zorder=3)
        ax.annotate(name, (latency, dice), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if max(lat) / min(lat) > 20:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.margins(x=0.15, y=0.12)   # room for the labels of the extreme points
    ax.set_xlabel(latency_label)
    ax.set_ylabel("mean foreground Dice")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, out_png, overwrite)
