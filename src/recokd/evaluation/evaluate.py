"""Score a folder of predicted segmentations against a folder of ground-truth segmentations.

:func:`evaluate_folders` matches files by name (``<case><file_ending>`` in both folders, as
nnU-Net writes predictions), reads them with nnU-Net's reader for the file ending (spacing from the
image header, in numpy ``(z, y, x)`` order), checks that each pair has the same shape and spacing
and sits at the same place in world space (origin and direction, or the affine for nibabel), and
computes :mod:`recokd.evaluation.metrics` per case and per class.
:meth:`EvaluationResult.write` saves ``summary.json`` (settings, conventions, per-class mean and
sd, foreground mean, group summaries such as the small structures) and ``per_case.csv`` (one row
per case and class), refusing to replace existing files unless ``overwrite=True``.

Statistics: per class, the mean and the sample standard deviation (``n - 1``; ``null`` for fewer
than two values) over cases. HD95 values that are NaN (exactly one mask empty, under the default
convention) are left out and counted (``nan``). The foreground mean and group means are means of
the per-class means (every class weighs the same, whatever its size); classes whose HD95 is NaN in
every case are left out of the HD95 mean and listed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recokd.atomic_files import atomic_path, is_partial
from recokd.errors import UserError
from recokd.evaluation.metrics import (
    DEFAULT_CONVENTION,
    ClassMetrics,
    EmptyMaskConvention,
    Label,
    compute_case_metrics,
    resolve_tolerances,
)
from recokd.json_files import write_json_atomic

__all__ = [
    "BOXPLOT_NAME",
    "PER_CASE_NAME",
    "SUMMARY_NAME",
    "EvaluationResult",
    "check_writable",
    "evaluate_folders",
    "find_dataset_json",
    "groups_from_dataset_json",
    "ignore_label_from_dataset_json",
    "labels_from_dataset_json",
    "mask_ignored",
    "read_segmentation",
]

SUMMARY_NAME = "summary.json"
#: nnU-Net's name for the label of unannotated voxels (dataset.json ``labels``)
IGNORE_NAME = "ignore"
PER_CASE_NAME = "per_case.csv"
BOXPLOT_NAME = "dice_boxplot.png"
#: version of the layout of ``summary.json`` / ``per_case.csv``
RESULTS_FORMAT = 1
_METRICS = ("dice", "hd95_mm", "nsd")
_CSV_FIELDS = ("case", "class", "label", "dice", "hd95_mm", "nsd", "nsd_tolerance_mm", "gt_voxels",
               "pred_voxels", "empty", "empty_convention")
_DEFINITIONS = {
    "dice": "2|P&G|/(|P|+|G|) over voxels",
    "hd95_mm": "95th-percentile Hausdorff distance, the larger of the two directed 95th percentiles "
               "(max(p95 d(P->G), p95 d(G->P))) between boundary voxels, Euclidean, in mm (MONAI "
               "compute_hausdorff_distance, percentile=95, spacing from the image header)",
    "nsd": "normalised surface Dice (Nikolov et al. 2021) by surface area as DeepMind's surface-distance: "
           "area of the surfels of both surfaces within the class tolerance (mm) of the other surface / "
           "total surfel area (MONAI compute_surface_dice with use_subvoxels=True, spacing from the "
           "header; not MONAI's default boundary-voxel count)",
    "per_class": "mean and sample sd (n-1; null if n<2) over cases; NaN HD95 left out and counted",
    "foreground_mean": "mean of the per-class means over foreground classes (each class weighs the same)",
    "ignore_label": "voxels with dataset.json's 'ignore' label in the ground truth are set to background in "
                    "both the ground truth and the prediction before scoring, so they count for no class "
                    "(nnU-Net's compute_metrics leaves them out of TP/FP/FN; per case: ignored_voxels)",
}


# --------------------------------------------------------------------------------------------------
# dataset.json, labels, groups


def find_dataset_json(pred_dir: Path, gt_dir: Path) -> Path | None:
    """``pred_dir/dataset.json`` (nnU-Net copies it next to predictions) or ``gt_dir/../dataset.json``."""
    for candidate in (pred_dir / "dataset.json", gt_dir.parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def _load_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"dataset_json: {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise UserError(f"dataset_json: cannot read {path} as JSON ({e})") from None
    if not isinstance(content, dict):
        raise UserError(f"dataset_json: {path} should hold a JSON object (nnU-Net's dataset.json)")
    return content


def _as_label(field_name: str, value: object) -> Label:
    """An int >= 1 or a tuple of such ints (an nnU-Net region)."""
    def ok(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1

    if ok(value):
        return int(value)  # type: ignore[arg-type]
    if isinstance(value, (list, tuple)) and value and all(ok(v) for v in value):
        return tuple(int(v) for v in value)
    raise UserError(f"{field_name}: expected a label value >= 1 or a list of them (a region), got {value!r}")


def _check_labels(labels: Mapping[str, object], source: str) -> dict[str, Label]:
    if not isinstance(labels, Mapping) or not labels:
        raise UserError(f"{source}: expected a non-empty mapping of class name -> label value")
    out = {str(k): _as_label(f"{source}[{k}]", v) for k, v in labels.items()}
    flat = [v for v in out.values() if isinstance(v, int)]
    if len(set(flat)) != len(flat):
        raise UserError(f"{source}: two classes share a label value: {out}")
    return out


def labels_from_dataset_json(content: Mapping[str, Any], path: str = "dataset.json") -> dict[str, Label]:
    """Foreground classes of nnU-Net's ``labels`` entry (background, value 0, left out)."""
    labels = content.get("labels")
    if not isinstance(labels, Mapping):
        raise UserError(f"{path}: no 'labels' mapping (expected e.g. {{'background': 0, 'liver': 1}})")
    fg = {k: v for k, v in labels.items()
          if not (k in ("background", IGNORE_NAME) or v == 0 or v == [0] or v == (0,))}
    return _check_labels(fg, f"{path} labels")


def ignore_label_from_dataset_json(content: Mapping[str, Any], path: str = "dataset.json") -> int | None:
    """The value of nnU-Net's ``ignore`` label (voxels left unannotated), or ``None`` if there is none."""
    labels = content.get("labels")
    if not isinstance(labels, Mapping) or IGNORE_NAME not in labels:
        return None
    value = labels[IGNORE_NAME]
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise UserError(f"{path} labels[{IGNORE_NAME}]: expected one integer label value >= 1 (nnU-Net's "
                        f"ignore label), got {value!r}")
    return int(value)


def mask_ignored(prediction: np.ndarray, reference: np.ndarray,
                 ignore_label: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """``prediction`` and ``reference`` with the voxels that the reference marks ``ignore_label`` set to
    background in both, and how many there were: those voxels count for no class, as in nnU-Net's
    ``compute_metrics`` (which leaves them out of TP, FP and FN)."""
    if ignore_label is None:
        return prediction, reference, 0
    ignored = reference == ignore_label
    return np.where(ignored, 0, prediction), np.where(ignored, 0, reference), int(ignored.sum())


def groups_from_dataset_json(content: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, list[str]]:
    """Class groups by size (``small``, ``medium``, ``large``) from a reco-kd phantom dataset.json.

    Reads ``reco_kd_phantoms.classes.<name>.size`` (written by :mod:`recokd.data.phantoms`); returns
    ``{}`` when the block is absent. Only classes in ``class_names`` are kept.
    """
    classes = content.get("reco_kd_phantoms", {}).get("classes") if isinstance(
        content.get("reco_kd_phantoms"), Mapping) else None
    if not isinstance(classes, Mapping):
        return {}
    groups: dict[str, list[str]] = {}
    for name in class_names:
        info = classes.get(name)
        if isinstance(info, Mapping) and isinstance(info.get("size"), str):
            groups.setdefault(info["size"], []).append(name)
    return groups


def _check_groups(groups: Mapping[str, Sequence[str]], class_names: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for g, members in groups.items():
        if isinstance(members, str) or not members:
            raise UserError(f"class_groups[{g}]: expected a non-empty list of class names, got {members!r}")
        unknown = [m for m in members if m not in class_names]
        if unknown:
            raise UserError(f"class_groups[{g}]: unknown class name(s) {unknown}; "
                            f"classes are {list(class_names)}")
        out[str(g)] = list(dict.fromkeys(members))
    return out


# --------------------------------------------------------------------------------------------------
# files


def known_file_endings() -> list[str]:
    """The image file endings nnU-Net's readers support (``.nii.gz``, ``.mha``, ...), longest first."""
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = {e for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}
    return sorted(endings, key=len, reverse=True)  # '.nii.gz' before '.gz'-like suffixes


def _infer_file_ending(folder: Path) -> str:
    endings = known_file_endings()
    found: set[str] = set()
    for p in folder.iterdir():
        if p.is_file():
            match = next((e for e in endings if p.name.lower().endswith(e)), None)
            if match:
                found.add(match)
    if not found:
        raise UserError(f"gt_dir: no segmentation files in {folder} (looked for {', '.join(endings)})")
    if len(found) > 1:
        raise UserError(f"gt_dir: files with several endings in {folder} ({sorted(found)}); "
                        "pass dataset_json (--dataset-json) or file_ending to choose one")
    return found.pop()


def _list_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    """Case id -> file; partial files of a killed writer (:mod:`recokd.atomic_files`) are not cases."""
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and len(p.name) > len(file_ending)
            and not is_partial(p.name)}


def _match_cases(pred_dir: Path, gt_dir: Path, file_ending: str) -> list[tuple[str, Path, Path]]:
    gt = _list_cases(gt_dir, file_ending)
    pred = _list_cases(pred_dir, file_ending)
    if not gt:
        raise UserError(f"gt_dir: no '*{file_ending}' files in {gt_dir}")
    missing = sorted(set(gt) - set(pred))
    extra = sorted(set(pred) - set(gt))
    if missing or extra:
        def show(names: list[str]) -> str:
            head = ", ".join(f"{n}{file_ending}" for n in names[:10])
            return head + (f", ... ({len(names)} in all)" if len(names) > 10 else "")

        parts = []
        if missing:
            parts.append(f"missing in pred_dir {pred_dir}: {show(missing)}")
        if extra:
            parts.append(f"in pred_dir but not in gt_dir {gt_dir}: {show(extra)}")
        raise UserError("prediction and ground-truth files do not match by name; " + "; ".join(parts))
    return [(c, pred[c], gt[c]) for c in sorted(gt)]


def _reader_class(file_ending: str, dataset_json: Mapping[str, Any] | None) -> type:
    from nnunetv2.imageio.reader_writer_registry import (
        determine_reader_writer_from_dataset_json,
        determine_reader_writer_from_file_ending,
    )

    try:
        if dataset_json is not None and "file_ending" in dataset_json:
            return determine_reader_writer_from_dataset_json(dataset_json, verbose=False)
        return determine_reader_writer_from_file_ending(file_ending, verbose=False)
    except RuntimeError as e:
        raise UserError(f"file_ending: nnU-Net has no reader for '{file_ending}' ({e})") from None


def read_segmentation(reader: Any, path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """An integer label map (numpy order, e.g. ``(z, y, x)``) and its spacing in mm (same order).

    ``reader`` is an instance of an nnU-Net reader/writer (e.g. ``SimpleITKIO()``).
    """
    seg, spacing, _ = _read_with_world(reader, path)
    return seg, spacing


def _world_geometry(props: dict) -> dict[str, np.ndarray]:
    """Where the grid sits in world space, from an nnU-Net reader's properties: SimpleITK's origin
    (mm) and direction cosines, or nibabel's affine; empty for readers that record neither."""
    sitk = props.get("sitk_stuff")
    if isinstance(sitk, dict) and "origin" in sitk and "direction" in sitk:
        return {"origin_mm": np.asarray(sitk["origin"], float),
                "direction": np.asarray(sitk["direction"], float)}
    nib = props.get("nibabel_stuff")
    if isinstance(nib, dict):
        affine = nib.get("reoriented_affine", nib.get("original_affine"))
        if affine is not None:
            return {"affine": np.asarray(affine, float)}
    return {}


def _read_with_world(reader: Any, path: Path) -> tuple[np.ndarray, tuple[float, ...], dict[str, np.ndarray]]:
    try:
        seg, props = reader.read_seg(str(path))
    except Exception as e:  # nnU-Net readers raise whatever their backend raises
        raise UserError(f"{path}: cannot read it as a segmentation with {type(reader).__name__} "
                        f"({e})") from None
    seg = np.asarray(seg)
    if seg.ndim != 4 or seg.shape[0] != 1:
        raise UserError(f"{path}: expected a single-channel segmentation, got array shape {seg.shape}")
    seg = seg[0]
    if seg.size and (not np.all(np.isfinite(seg)) or np.any(seg != np.round(seg)) or seg.min() < 0):
        raise UserError(f"{path}: expected non-negative integer labels (a segmentation), found other values")
    spacing = tuple(float(s) for s in props["spacing"])
    return seg.astype(np.int32, copy=False), spacing, _world_geometry(props)


# --------------------------------------------------------------------------------------------------
# result


def _stats(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    finite = arr[~np.isnan(arr)]
    n = int(finite.size)
    return {
        "mean": float(finite.mean()) if n else None,
        "sd": float(finite.std(ddof=1)) if n >= 2 else None,
        "n": n,
        "nan": int(arr.size - n),
    }


@dataclass
class EvaluationResult:
    """Per-case, per-class scores and everything needed to state how they were obtained."""

    pred_dir: Path
    gt_dir: Path
    labels: dict[str, Label]
    per_case: dict[str, dict[str, ClassMetrics]]
    case_geometry: dict[str, dict[str, list[float] | list[int]]]
    nsd_tolerance_mm: dict[str, float]
    convention: EmptyMaskConvention = DEFAULT_CONVENTION
    class_groups: dict[str, list[str]] = field(default_factory=dict)
    labels_source: str = "labels argument"
    dataset_json: Path | None = None
    file_ending: str = ".nii.gz"
    reader: str = "SimpleITKIO"
    warnings: list[str] = field(default_factory=list)
    #: nnU-Net's ignore label of the dataset: its voxels (in the reference) were scored for no class
    ignore_label: int | None = None

    @property
    def cases(self) -> list[str]:
        return list(self.per_case)

    def values(self, metric: str, class_name: str) -> np.ndarray:
        """One metric (``dice``, ``hd95_mm``, ``nsd``) of one class over all cases (NaN kept)."""
        if metric not in _METRICS:
            raise UserError(f"metric: expected one of {list(_METRICS)}, got {metric!r}")
        return np.array([getattr(self.per_case[c][class_name], metric) for c in self.per_case], dtype=float)

    def per_class(self) -> dict[str, dict[str, Any]]:
        """Mean, sd, n (and NaN count) of each metric per class, plus the empty-mask case counts."""
        out: dict[str, dict[str, Any]] = {}
        for name, value in self.labels.items():
            row: dict[str, Any] = {"label": list(value) if isinstance(value, tuple) else value}
            for m in _METRICS:
                row[m] = _stats(self.values(m, name))
            row["nsd"]["tolerance_mm"] = self.nsd_tolerance_mm[name]
            empties = [self.per_case[c][name].empty for c in self.per_case]
            row["empty_cases"] = {k: empties.count(k) for k in ("both", "gt", "pred")}
            out[name] = row
        return out

    def _mean_of_classes(self, names: Sequence[str], per_class: Mapping[str, Any]) -> dict[str, Any]:
        res: dict[str, Any] = {"classes": list(names)}
        for m in _METRICS:
            means = [per_class[n][m]["mean"] for n in names]
            kept = [v for v in means if v is not None]
            res[m] = float(np.mean(kept)) if kept else None
            if m == "hd95_mm":
                res["hd95_classes_left_out"] = [n for n, v in zip(names, means, strict=True) if v is None]
        return res

    def summary(self) -> dict[str, Any]:
        """Everything ``summary.json`` holds (JSON-ready: NaN written as ``null``)."""
        from recokd import __version__

        per_class = self.per_class()
        groups = {g: self._mean_of_classes(members, per_class) for g, members in self.class_groups.items()}
        return {
            "reco_kd_evaluation": RESULTS_FORMAT,
            "pred_dir": str(self.pred_dir),
            "gt_dir": str(self.gt_dir),
            "dataset_json": str(self.dataset_json) if self.dataset_json else None,
            "labels_source": self.labels_source,
            "file_ending": self.file_ending,
            "reader": self.reader,
            "num_cases": len(self.per_case),
            "cases": [{"case": c, **self.case_geometry[c]} for c in self.per_case],
            "labels": {k: list(v) if isinstance(v, tuple) else v for k, v in self.labels.items()},
            "ignore_label": self.ignore_label,
            "empty_mask_convention": self.convention.as_dict(),
            "nsd_tolerance_mm": dict(self.nsd_tolerance_mm),
            "definitions": dict(_DEFINITIONS),
            "per_class": per_class,
            "foreground_mean": self._mean_of_classes(list(self.labels), per_class),
            "groups": groups,
            "warnings": list(self.warnings),
            "software": _versions(__version__),
        }

    def rows(self) -> list[dict[str, Any]]:
        """``per_case.csv`` rows: one per case and class."""
        rows = []
        for case, metrics in self.per_case.items():
            for name, cm in metrics.items():
                value = self.labels[name]
                rows.append({
                    "case": case, "class": name,
                    "label": "+".join(map(str, value)) if isinstance(value, tuple) else value,
                    "dice": cm.dice, "hd95_mm": cm.hd95_mm, "nsd": cm.nsd,
                    "nsd_tolerance_mm": cm.nsd_tolerance_mm, "gt_voxels": cm.gt_voxels,
                    "pred_voxels": cm.pred_voxels, "empty": cm.empty, "empty_convention": cm.convention,
                })
        return rows

    def write(self, out_dir: str | Path, overwrite: bool = False) -> dict[str, Path]:
        """Write ``summary.json`` and ``per_case.csv`` into ``out_dir`` (created if needed).

        Refuses (UserError) to replace an existing file unless ``overwrite``; returns the paths.
        """
        out = Path(out_dir)
        paths = {"summary": out / SUMMARY_NAME, "per_case": out / PER_CASE_NAME}
        check_writable(paths.values(), overwrite)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(paths["summary"], self.summary())
        with atomic_path(paths["per_case"]) as partial, partial.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
            writer.writeheader()
            for row in self.rows():
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        return paths


def check_writable(paths: Any, overwrite: bool) -> None:
    """UserError naming the existing files among ``paths`` unless ``overwrite``."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise UserError(f"output exists: {', '.join(existing)}; pass --overwrite to replace them")
    for p in existing:
        if Path(p).is_dir():
            raise UserError(f"output: {p} is a directory, expected a file path")


def _versions(reco_kd: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"reco_kd": reco_kd}
    for pkg in ("monai", "nnunetv2"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return out


# --------------------------------------------------------------------------------------------------
# main entry


def _as_dir(field_name: str, path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"{field_name}: {p} is not a directory")
    return p


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    labels: Mapping[str, int | Sequence[int]] | None = None,
    dataset_json: str | Path | None = None,
    nsd_tolerance_mm: float | Mapping[str, float] = 1.0,
    *,
    hd95_one_empty_mm: float | None = None,
    class_groups: Mapping[str, Sequence[str]] | None = None,
    file_ending: str | None = None,
    spacing_tolerance_mm: float = 1e-3,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> EvaluationResult:
    """Score every ``<case><file_ending>`` of ``pred_dir`` against the same name in ``gt_dir``.

    - ``labels``: ``{class name: value}`` (a list of values is an nnU-Net region); else the
      ``labels`` of ``dataset_json``; else of a ``dataset.json`` found in ``pred_dir`` (nnU-Net
      writes one next to its predictions) or in ``gt_dir``'s parent (the raw dataset folder);
      else every non-zero value found in the files (named by the value; reads every file twice).
    - ``nsd_tolerance_mm``: one tolerance in mm or ``{class name: mm}`` (key ``default`` for the
      rest, else 1 mm).
    - ``hd95_one_empty_mm``: HD95 when exactly one mask is empty: ``None`` = NaN (left out of
      means and counted) or a stated maximum in mm (see :data:`metrics.EMPTY_MASK_CONVENTION_TEXT`).
    - ``class_groups``: ``{group: [class names]}`` summarised as means of class means; by default
      the size groups (``small``, ``medium``, ``large``) of a reco-kd phantom dataset.json.
    - ``file_ending``: default from the dataset.json, else inferred from the files in ``gt_dir``.
    - ``spacing_tolerance_mm``: largest allowed difference per axis between the spacings of a
      prediction and its ground truth.
    - ``out_dir``: when given, :meth:`EvaluationResult.write` is called (checked before scoring).

    Raises :class:`~recokd.errors.UserError` for unmatched files (listing them), a shape or spacing
    mismatch (naming the case), unreadable files or bad arguments.
    """
    pred = _as_dir("pred_dir", pred_dir)
    gt = _as_dir("gt_dir", gt_dir)
    if out_dir is not None:
        check_writable([Path(out_dir) / SUMMARY_NAME, Path(out_dir) / PER_CASE_NAME], overwrite)
    convention = EmptyMaskConvention(hd95_one_empty_mm)
    if not (isinstance(spacing_tolerance_mm, (int, float)) and spacing_tolerance_mm >= 0):
        raise UserError(f"spacing_tolerance_mm: expected a number >= 0, got {spacing_tolerance_mm!r}")

    dj_path = Path(dataset_json).expanduser() if dataset_json is not None else find_dataset_json(pred, gt)
    dj = _load_json(dj_path) if dj_path is not None else None
    if file_ending is None:
        has_ending = dj is not None and isinstance(dj.get("file_ending"), str)
        file_ending = dj["file_ending"] if has_ending else _infer_file_ending(gt)  # type: ignore[index]
    reader_cls = _reader_class(file_ending, dj)
    reader = reader_cls()
    matched = _match_cases(pred, gt, file_ending)

    if labels is not None:
        lab, source = _check_labels(labels, "labels"), "labels argument"
    elif dj is not None:
        lab, source = labels_from_dataset_json(dj, str(dj_path)), f"dataset.json ({dj_path})"
    else:
        lab, source = _labels_from_files(reader, matched), "values found in the files"
    ignore_label = ignore_label_from_dataset_json(dj, str(dj_path)) if dj is not None else None
    names = list(lab)
    tolerances = resolve_tolerances(names, nsd_tolerance_mm)
    if class_groups is not None:
        groups = _check_groups(class_groups, names)
    else:
        groups = groups_from_dataset_json(dj, names) if dj is not None else {}

    known = {v for val in lab.values() for v in (val if isinstance(val, tuple) else (val,))}
    per_case: dict[str, dict[str, ClassMetrics]] = {}
    geometry: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    iterator: Any = matched
    if progress:
        from tqdm import tqdm

        iterator = tqdm(matched, desc="evaluating", unit="case")
    for case, p_path, g_path in iterator:
        p_seg, p_spc, p_world = _read_with_world(reader, p_path)
        g_seg, g_spc, g_world = _read_with_world(reader, g_path)
        _check_geometry(case, p_path, g_path, p_seg.shape, g_seg.shape, p_spc, g_spc, spacing_tolerance_mm)
        _check_world(case, p_path, g_path, p_world, g_world, spacing_tolerance_mm)
        p_seg, g_seg, ignored = mask_ignored(p_seg, g_seg, ignore_label)
        for what, seg in (("prediction", p_seg), ("ground truth", g_seg)):
            unknown = sorted(set(np.unique(seg).tolist()) - known - {0})
            if unknown:
                notes.append(f"case {case}: {what} has label value(s) {unknown} not in the labels; "
                             "not scored")
        per_case[case] = compute_case_metrics(p_seg, g_seg, lab, g_spc, tolerances, convention)
        geometry[case] = {"shape": list(g_seg.shape), "spacing_mm": list(g_spc)}
        if ignore_label is not None:
            geometry[case]["ignored_voxels"] = ignored

    result = EvaluationResult(
        pred_dir=pred, gt_dir=gt, labels=lab, per_case=per_case, case_geometry=geometry,
        nsd_tolerance_mm=tolerances, convention=convention, class_groups=groups, labels_source=source,
        dataset_json=dj_path, file_ending=file_ending, reader=reader_cls.__name__, warnings=notes,
        ignore_label=ignore_label,
    )
    if out_dir is not None:
        result.write(out_dir, overwrite=overwrite)
    return result


def _labels_from_files(reader: Any, matched: Sequence[tuple[str, Path, Path]]) -> dict[str, Label]:
    values: set[int] = set()
    for _, p_path, g_path in matched:
        for path in (p_path, g_path):
            values.update(np.unique(read_segmentation(reader, path)[0]).tolist())
    values.discard(0)
    if not values:
        raise UserError("labels: no foreground label in any file; pass labels (--labels name=value) "
                        "or a dataset.json")
    return {str(v): int(v) for v in sorted(values)}


def _check_world(case: str, p_path: Path, g_path: Path, p_world: dict[str, np.ndarray],
                 g_world: dict[str, np.ndarray], tol: float) -> None:
    """A prediction misplaced in world space (origin, direction or affine differing) is refused: its
    voxels would be scored against the wrong anatomy."""
    for key, what, limit in (("origin_mm", "origin (mm)", tol), ("direction", "direction cosines", 1e-4),
                             ("affine", "affine", tol)):
        if key not in p_world or key not in g_world:
            continue
        a, b = p_world[key], g_world[key]
        if a.shape != b.shape or np.any(np.abs(a - b) > limit):
            fmt = lambda v: "[" + ", ".join(f"{x:.4g}" for x in v.ravel()) + "]"  # noqa: E731
            raise UserError(
                f"case {case}: prediction {p_path} has {what} {fmt(a)} but ground truth {g_path} has "
                f"{fmt(b)}; the prediction is not on the ground truth's grid in world space (was it "
                "resampled or written with another image's header?)"
            )


def _check_geometry(case: str, p_path: Path, g_path: Path, p_shape: tuple[int, ...], g_shape: tuple[int, ...],
                    p_spc: Sequence[float], g_spc: Sequence[float], tol: float) -> None:
    if p_shape != g_shape:
        raise UserError(f"case {case}: prediction {p_path} has shape {p_shape} but ground truth {g_path} "
                        f"has shape {g_shape} (numpy order); predictions must be on the ground truth's grid")
    diff = np.abs(np.asarray(p_spc, dtype=float) - np.asarray(g_spc, dtype=float))
    if len(p_spc) != len(g_spc) or np.any(diff > tol):
        fmt = lambda s: " x ".join(f"{v:g}" for v in s)  # noqa: E731
        raise UserError(f"case {case}: prediction {p_path} has spacing {fmt(p_spc)} mm but ground truth "
                        f"{g_path} has {fmt(g_spc)} mm (tolerance {tol:g} mm per axis)")
