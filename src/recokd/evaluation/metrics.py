"""Per-class segmentation metrics in physical units: Dice, HD95 (mm) and NSD at a tolerance in mm.

Arrays are label maps indexed like the spacing: with nnU-Net's readers both are ``(z, y, x)``
(numpy order), e.g. ``spacing=(2.5, 1, 1)`` for 2.5 mm slices with 1 mm pixels. 2D maps (or 3D
maps with a single slice, as nnU-Net reads 2D images) are scored in 2D.

Definitions
-----------
- **Dice** ``2 |P & G| / (|P| + |G|)`` over voxels (independent of the spacing).
- **HD95** (mm): the symmetric 95th-percentile Hausdorff distance of MONAI's
  :func:`monai.metrics.compute_hausdorff_distance` (``percentile=95``, ``spacing`` given):
  ``max(p95(d(P -> G)), p95(d(G -> P)))`` where ``d(A -> B)`` are the Euclidean distances (mm) from
  every boundary voxel of ``A`` to the nearest boundary voxel of ``B``. Boundary voxels are the
  mask minus its 6-connected erosion; voxels on the border of the array count as boundary.
- **NSD** (normalised surface Dice, Nikolov et al. 2021) as DeepMind's ``surface-distance``
  defines it (the definition of the NSD paper and of the MSD / Metrics Reloaded scripts): each
  surface is a set of surface elements (surfels) with areas in mm^2, one per corner of the voxel
  grid whose 2x2x2 neighbourhood the surface crosses (marching-cubes areas for the spacing);
  ``NSD = (area of P's surfels within tolerance_mm of G's + area of G's within tolerance_mm of P's)
  / (area of P + area of G)``, distances in mm between surfel positions. Computed with MONAI's
  :func:`monai.metrics.compute_surface_dice` with ``use_subvoxels=True``, which reproduces
  ``surface_distance.compute_surface_dice_at_tolerance`` (tested to 1e-6). MONAI's default
  (``use_subvoxels=False``) counts boundary voxels instead, which reads lower, most of all on
  anisotropic spacing (a 6^3 cube shifted by one voxel at 2 x 0.8 x 1.2 mm, 0.5 mm tolerance:
  0.658 by voxel counting, 0.779 by surface area).

The empty-mask cases are decided here, before MONAI is called (MONAI 1.6 returns NaN for HD95 and
NSD when both masks are empty and NaN, not infinity, for HD95 when exactly one is): see
:data:`EMPTY_MASK_CONVENTION_TEXT` and :class:`EmptyMaskConvention`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from recokd.errors import UserError

__all__ = [
    "DEFAULT_CONVENTION",
    "EMPTY_MASK_CONVENTION_TEXT",
    "ClassMetrics",
    "EmptyMaskConvention",
    "Label",
    "binary_metrics",
    "compute_case_metrics",
    "dice",
    "hd95_mm",
    "label_mask",
    "nsd",
    "resolve_tolerances",
]

#: a label value, or an nnU-Net region (a tuple of values whose union is the structure)
Label = int | tuple[int, ...]

#: README-ready statement of the empty-mask convention (also written into every results file)
EMPTY_MASK_CONVENTION_TEXT = """\
Empty masks (convention "recokd-empty-v1"). For each case and class:
- both prediction and ground truth empty: Dice 1, HD95 0 mm, NSD 1 (a correct "absent");
- exactly one of them empty: Dice 0, NSD 0, and HD95 undefined: NaN by default ("hd95-nan"):
  such values are left out of every HD95 mean and sd and counted in "hd95_nan" next to it;
  with a stated maximum M mm ("hd95-max-<M>mm") HD95 is M instead and is averaged like any value.
These cases are decided by reco-kd before MONAI is called; nnU-Net's own evaluator instead
returns NaN Dice when both masks are empty.
"""


@dataclass(frozen=True)
class EmptyMaskConvention:
    """How empty masks are scored; ``hd95_one_empty_mm`` is ``None`` for NaN or a maximum in mm.

    Both empty -> Dice 1, HD95 0, NSD 1. Exactly one empty -> Dice 0, NSD 0 and HD95 NaN (left
    out of means, counted) or, when ``hd95_one_empty_mm`` is given, that value in mm.
    """

    hd95_one_empty_mm: float | None = None

    def __post_init__(self) -> None:
        v = self.hd95_one_empty_mm
        if v is not None and not (_is_number(v) and math.isfinite(v) and v >= 0):
            raise UserError(f"hd95_one_empty_mm: expected None (NaN) or a finite number >= 0 in mm, "
                            f"got {v!r}")

    @property
    def name(self) -> str:
        """Short identifier recorded next to every number, e.g. ``recokd-empty-v1/hd95-nan``."""
        if self.hd95_one_empty_mm is None:
            return "recokd-empty-v1/hd95-nan"
        return f"recokd-empty-v1/hd95-max-{self.hd95_one_empty_mm:g}mm"

    @property
    def hd95_one_empty(self) -> float:
        """The HD95 value (mm) given when exactly one mask is empty (NaN or the stated maximum)."""
        return math.nan if self.hd95_one_empty_mm is None else float(self.hd95_one_empty_mm)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready description (name, the values of each case and the full text)."""
        one_hd = "NaN (excluded from means; counted as hd95_nan)" if self.hd95_one_empty_mm is None \
            else f"{self.hd95_one_empty_mm:g} mm (stated maximum, included in means)"
        return {
            "name": self.name,
            "both_empty": {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0},
            "one_empty": {"dice": 0.0, "hd95_mm": one_hd, "nsd": 0.0},
            "text": EMPTY_MASK_CONVENTION_TEXT,
        }


DEFAULT_CONVENTION = EmptyMaskConvention()


@dataclass(frozen=True)
class ClassMetrics:
    """Scores of one class in one case.

    ``empty`` is ``"none"`` (both masks non-empty), ``"both"``, ``"gt"`` (only the ground truth is
    empty) or ``"pred"`` (only the prediction is empty); the empty cases follow ``convention``.
    """

    dice: float
    hd95_mm: float
    nsd: float
    nsd_tolerance_mm: float
    gt_voxels: int
    pred_voxels: int
    empty: str
    convention: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    try:
        spc = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        spc = ()
    if len(spc) != ndim or not all(math.isfinite(s) and s > 0 for s in spc):
        raise UserError(f"spacing: expected {ndim} positive numbers in mm (one per array axis), "
                        f"got {spacing!r}")
    return spc


def _check_tolerance(field: str, tol: object) -> float:
    if not (_is_number(tol) and math.isfinite(float(tol)) and float(tol) >= 0):  # type: ignore[arg-type]
        raise UserError(f"{field}: expected a finite NSD tolerance >= 0 in mm, got {tol!r}")
    return float(tol)  # type: ignore[arg-type]


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise UserError(f"prediction and ground truth: shapes differ, {pred.shape} vs {gt.shape}")
    if pred.ndim not in (2, 3):
        raise UserError(f"prediction and ground truth: expected 2D or 3D arrays, got shape {pred.shape}")
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


def _empty_case(p_any: bool, g_any: bool) -> str:
    if p_any and g_any:
        return "none"
    if not p_any and not g_any:
        return "both"
    return "gt" if p_any else "pred"


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty, 0.0 when exactly one is."""
    p, g = _check_pair(pred, gt)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def _crop(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel (inside the array).

    Distances between boundaries do not change: MONAI crops the same way, and a structure that
    touches the array border still touches it after cropping.
    """
    union = p | g
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        slices.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, union.shape[axis])))
    s = tuple(slices)
    return p[s], g[s]


def _surface_scores(p: np.ndarray, g: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float, *,
                    want_hd: bool = True, want_nsd: bool = True) -> tuple[float, float]:
    """HD95 (mm) and NSD of two non-empty masks with MONAI, spacing passed as ``[spacing]``."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pc, gc = _crop(p, g)
    tp = torch.from_numpy(np.ascontiguousarray(pc))[None, None]
    tg = torch.from_numpy(np.ascontiguousarray(gc))[None, None]
    # a sequence of sequences (one per batch item): unambiguous for MONAI's prepare_spacing
    spc = [list(spacing)]
    hd = nsd_value = math.nan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        if want_hd:
            hd = float(compute_hausdorff_distance(tp, tg, include_background=True, percentile=95,
                                                  spacing=spc)[0, 0])
        if want_nsd:
            nsd_value = float(compute_surface_dice(tp, tg, class_thresholds=[tolerance_mm],
                                                   include_background=True, spacing=spc,
                                                   use_subvoxels=True)[0, 0])
    return hd, nsd_value


def hd95_mm(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float],
            convention: EmptyMaskConvention = DEFAULT_CONVENTION) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (see the module docstring).

    Both masks empty -> 0.0; exactly one empty -> ``convention.hd95_one_empty`` (NaN by default).
    """
    p, g = _check_pair(pred, gt)
    spc = _check_spacing(spacing, p.ndim)
    case = _empty_case(bool(p.any()), bool(g.any()))
    if case == "both":
        return 0.0
    if case != "none":
        return convention.hd95_one_empty
    return _surface_scores(p, g, spc, 0.0, want_nsd=False)[0]


def nsd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0) -> float:
    """Normalised surface Dice at ``tolerance_mm``; 1.0 when both masks are empty, 0.0 when one is."""
    p, g = _check_pair(pred, gt)
    spc = _check_spacing(spacing, p.ndim)
    tol = _check_tolerance("tolerance_mm", tolerance_mm)
    case = _empty_case(bool(p.any()), bool(g.any()))
    if case != "none":
        return 1.0 if case == "both" else 0.0
    return _surface_scores(p, g, spc, tol, want_hd=False)[1]


def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0,
                   convention: EmptyMaskConvention = DEFAULT_CONVENTION) -> ClassMetrics:
    """Dice, HD95 (mm) and NSD at ``tolerance_mm`` of two binary masks, empty cases by ``convention``."""
    p, g = _check_pair(pred, gt)
    spc = _check_spacing(spacing, p.ndim)
    tol = _check_tolerance("tolerance_mm", tolerance_mm)
    case = _empty_case(bool(p.any()), bool(g.any()))
    if case == "both":
        d, hd, ns = 1.0, 0.0, 1.0
    elif case != "none":
        d, hd, ns = 0.0, convention.hd95_one_empty, 0.0
    else:
        d = dice(p, g)
        hd, ns = _surface_scores(p, g, spc, tol)
    return ClassMetrics(dice=d, hd95_mm=hd, nsd=ns, nsd_tolerance_mm=tol, gt_voxels=int(g.sum()),
                        pred_voxels=int(p.sum()), empty=case, convention=convention.name)


def label_mask(labels: np.ndarray, value: Label) -> np.ndarray:
    """Binary mask of one label value, or of the union of a region's values (nnU-Net regions)."""
    if isinstance(value, tuple):
        return np.isin(labels, value)
    return labels == value


def resolve_tolerances(class_names: Sequence[str], nsd_tolerance_mm: float | Mapping[str, float],
                       default_mm: float = 1.0) -> dict[str, float]:
    """Per-class NSD tolerance in mm from one number or a ``{class name: mm}`` mapping.

    In a mapping, the key ``"default"`` (or ``default_mm``) applies to classes not named; a name
    that is not a class is an error.
    """
    if isinstance(nsd_tolerance_mm, Mapping):
        tol = dict(nsd_tolerance_mm)
        default = _check_tolerance("nsd_tolerance_mm[default]", tol.pop("default", default_mm))
        unknown = sorted(set(tol) - set(class_names))
        if unknown:
            raise UserError(f"nsd_tolerance_mm: unknown class name(s) {unknown}; "
                            f"classes are {list(class_names)}")
        return {c: _check_tolerance(f"nsd_tolerance_mm[{c}]", tol.get(c, default)) for c in class_names}
    value = _check_tolerance("nsd_tolerance_mm", nsd_tolerance_mm)
    return {c: value for c in class_names}


def compute_case_metrics(pred: np.ndarray, gt: np.ndarray, labels: Mapping[str, Label],
                         spacing: Sequence[float], nsd_tolerance_mm: float | Mapping[str, float] = 1.0,
                         convention: EmptyMaskConvention = DEFAULT_CONVENTION) -> dict[str, ClassMetrics]:
    """Scores of every class in ``labels`` (name -> value or region; background left out by caller).

    ``pred`` and ``gt`` are integer label maps of the same shape, ``spacing`` in mm per axis (same
    order). A 3D map with a single slice along the first axis is scored as 2D.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise UserError(f"prediction and ground truth: shapes differ, {pred.shape} vs {gt.shape}")
    spc = _check_spacing(spacing, gt.ndim)
    if gt.ndim == 3 and gt.shape[0] == 1:
        pred, gt, spc = pred[0], gt[0], spc[1:]
    tolerances = resolve_tolerances(list(labels), nsd_tolerance_mm)
    return {name: binary_metrics(label_mask(pred, value), label_mask(gt, value), spc, tolerances[name],
                                 convention)
            for name, value in labels.items()}
