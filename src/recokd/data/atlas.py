"""Real anatomy for the benchmarks: an nnU-Net raw dataset from an MRI template and its atlas.

:func:`write_atlas_dataset` crops a template (a T1 MRI) and a label atlas drawn on the same grid
around chosen atlas regions (the classes), resamples both to an isotropic spacing, and draws
distinct cases from random smooth deformations (small affine + elastic field; the same mapping for
image and labels, labels by nearest neighbour) and random intensity changes (bias field, gamma,
noise). Case ``i`` of seed ``s`` uses :func:`recokd.data.phantoms.case_rng` ``(s, i)``; the
dataset is reproducible from its ``dataset.json`` (entry ``reco_kd_atlas``) and the two input files
(their SHA-256 are recorded).

Default inputs: Debian's ``mricron-data`` package (``apt-get install mricron-data``; BSD-3-clause
per ``/usr/share/doc/mricron-data/copyright``), ``/usr/share/mricron/templates``:

- ``ch2.nii.gz``: the Colin27 single-subject T1 ("ch2"), uint8, 181 x 217 x 181 voxels
  (x, y, z) at 1 mm, origin (90, 125, -71) mm, ITK direction diag(-1, -1, 1) (RAS+ in the
  NIfTI sform, code 4 "MNI"; qform code 0). Intensities 0-254: in the brain (mask of the
  package's ``ch2bet.nii.gz``) CSF ~30-50, cortical grey matter ~80-90, white matter ~110-116.
- ``aal.nii.gz``: the AAL parcellation (Tzourio-Mazoyer et al. 2002, drawn on this brain), uint8
  values 0-116, names in the sidecar ``aal.nii.txt`` ("value name code"). **Same grid**: size,
  spacing, origin and direction are identical to ``ch2.nii.gz``.

Alignment, checked on the package's files (2026-12-04): 94% of all AAL voxels and 85-100% of every
default region's voxels lie above the template's Otsu threshold (49: tissue, not background);
mean template intensity per default region: caudate 80 / 82 (sd ~21: the AAL caudate touches the
lateral ventricles), putamen 99 / 99, pallidum 104 / 103, thalamus 94 / 94, hippocampus 83 / 84,
amygdala 86 / 82 (left / right), i.e. deep grey matter between cortical grey (~87) and white
matter (~115); left regions lie at array x indices 55-88, right ones at 92-126 (left of the
midline in the sform's orientation). Shifting the labels against the template gives the largest
grey/white contrast (mean of unlabelled brain minus mean of labelled brain: 7.50 against 6.78 at
no shift) and the largest template gradient on the subcortical boundaries at a shift of about
-1 voxel along z and y (labels ~1 mm superior and ~1 mm anterior of the template's edges) and 0
along x. The pair is aligned to about 1 mm, half a voxel at the default 2 mm spacing; we use it
as shipped and do not correct it.

What :func:`load_atlas_pair` refuses (``UserError``, one line): a missing file (for the default
paths: "apt-get install mricron-data"), a template and atlas on different grids (size, spacing,
origin or direction), a requested region absent from the atlas, and a pair whose regions mostly
fall on background (fewer than :data:`MIN_TISSUE_FRACTION` of the regions' voxels above the
template's Otsu threshold). A misregistration that keeps the regions inside the head is not
detectable this way.

Default dataset (``recokd atlas-dataset``): the 12 subcortical regions of AAL (caudate, putamen,
pallidum, thalamus, hippocampus, amygdala; left and right apart), crop = their bounding box plus
6 mm, resampled to 2 mm: a 34 x 41 x 47 (z, y, x) grid (65,518 voxels). Mean voxels per case
(40 cases, seed 0; left / right): amygdala 217 / 239 (the smallest structures; 1733 / 1965 mm^3 in
the atlas), pallidum 283 / 262, caudate 950 / 958, putamen 984 / 1020, hippocampus 937 / 923,
thalamus 1070 / 1011.
nnU-Net v2.8 plans it (40 cases) as one 40 x 48 x 48 patch (the whole case), batch 2, 4 stages of
32-256 channels: ~1.9x the voxels per iteration of the phantom study's teacher (32^3, batch 3,
~1 s per iteration on an idle 2-core CPU), so a stock teacher gets roughly 1500 iterations in the
45-minute budget (an estimate from the voxel ratio, not a measured figure). At 2.5 mm the
amygdala would have ~120 voxels, at 1.5 mm the grid ~2.4x the voxels.

Arrays are ``(z, y, x)``; the written images keep the template's direction and the physical
position of the crop (the origin moves, the orientation does not).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recokd.data.shapes import rotation_matrix, smooth_field
from recokd.errors import UserError

__all__ = [
    "AtlasPair",
    "DEFAULT_ATLAS",
    "DEFAULT_REGIONS",
    "DEFAULT_TEMPLATE",
    "Deformation",
    "generate_atlas_case",
    "load_atlas_pair",
    "write_atlas_dataset",
]

TEMPLATE_DIR = Path("/usr/share/mricron/templates")
DEFAULT_TEMPLATE = TEMPLATE_DIR / "ch2.nii.gz"
DEFAULT_ATLAS = TEMPLATE_DIR / "aal.nii.gz"
INSTALL_HINT = "apt-get install mricron-data"
#: the subcortical grey-matter structures of AAL, left and right apart (class 1..12 in this order)
DEFAULT_REGIONS = (
    "Caudate_L", "Caudate_R", "Putamen_L", "Putamen_R", "Pallidum_L", "Pallidum_R",
    "Thalamus_L", "Thalamus_R", "Hippocampus_L", "Hippocampus_R", "Amygdala_L", "Amygdala_R",
)
#: the least fraction of the chosen regions' voxels that must lie on tissue (above Otsu's threshold)
MIN_TISSUE_FRACTION = 0.8
#: bumped whenever the same seed and inputs would produce different cases
GENERATOR_VERSION = 1
#: geometry tolerance (mm, and for the direction cosines) when comparing the template and atlas grids
_GRID_TOL = 1e-3


@dataclass(frozen=True)
class Deformation:
    """The random changes that make case ``i`` differ from the template.

    Geometry, in mm about the crop's centre, per case: rotation angles uniform in
    ``±rotation_deg``, per-axis scale ``1 + U(±scale)``, translation uniform in ``±translation_mm``,
    plus an elastic displacement whose three components are :func:`~recokd.data.shapes.smooth_field`
    draws (``elastic_knots`` knots per axis: correlation length ~ crop extent / (knots - 1)) times
    ``elastic_mm`` (its standard deviation). Intensity, on the template scaled so that its 99th
    percentile in the crop is 1: a multiplicative bias field ``exp(bias * field)`` (3 knots), a gamma
    ``x -> x ** g`` with ``log g`` uniform in ``±gamma``, then Gaussian noise of sd ``noise``.
    """

    rotation_deg: float = 5.0
    scale: float = 0.05
    translation_mm: float = 3.0
    elastic_mm: float = 2.0
    elastic_knots: int = 5
    bias: float = 0.1
    gamma: float = 0.3
    noise: float = 0.03

    def validate(self) -> None:
        """``UserError`` naming the first setting out of its range."""
        limits = {"rotation_deg": 30.0, "scale": 0.3, "translation_mm": 20.0, "elastic_mm": 10.0,
                  "bias": 1.0, "gamma": 1.0, "noise": 1.0}
        for field, hi in limits.items():
            v = getattr(self, field)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= hi:
                raise UserError(f"{field}: expected a number in 0..{hi:g}, got {v!r}")
        from recokd.data.phantoms import _check_int  # (phantoms imports scipy: not at `recokd --help` time)

        _check_int("elastic_knots", self.elastic_knots, 2, 12)


@dataclass(frozen=True)
class AtlasPair:
    """A template and its atlas on one grid, loaded and checked by :func:`load_atlas_pair`.

    ``image`` float32 and ``labels`` (class indices ``0..K``, the chosen regions remapped to ``1..K``)
    uint8, both ``(z, y, x)`` of the full grid; ``spacing_zyx`` mm; ``regions`` the ``(atlas value,
    name)`` of classes 1..K; ``reference`` the template as SimpleITK read it (its header places crops in
    physical space).
    """

    image: np.ndarray
    labels: np.ndarray
    spacing_zyx: tuple[float, float, float]
    regions: tuple[tuple[int, str], ...]
    template_path: Path
    atlas_path: Path
    reference: object

    @property
    def class_names(self) -> list[str]:
        """Names of classes 1..K, in label order."""
        return [name for _, name in self.regions]


def _read_image(path: Path, role: str, default: Path):
    """SimpleITK image at ``path``, or a one-line ``UserError`` (with the install hint for the default)."""
    import SimpleITK as sitk

    if not path.is_file():
        hint = f" (the default comes with Debian's mricron-data: {INSTALL_HINT})" if path == default else ""
        raise UserError(f"{role}: {path} does not exist{hint}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unreadable"
        raise UserError(f"{role}: {path} is not an image SimpleITK can read ({first})") from None


def _region_table(atlas_path: Path) -> dict[str, int]:
    """Region name -> atlas value from the sidecar ``<atlas without .gz>.txt`` ("value name ..." lines;
    MRIcron's convention), empty when there is none."""
    name = atlas_path.name[:-3] if atlas_path.name.endswith(".gz") else atlas_path.name
    sidecar = atlas_path.with_name(name + ".txt")
    table: dict[str, int] = {}
    if sidecar.is_file():
        for line in sidecar.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                table[parts[1]] = int(parts[0])
    return table


def _resolve_regions(
    tokens: Sequence[str | int], atlas_path: Path, present: set[int]
) -> tuple[tuple[int, str], ...]:
    """``(value, name)`` of each region, given by atlas value or by name (sidecar table); checked present."""
    table = _region_table(atlas_path)
    by_value = {v: n for n, v in table.items()}
    out: list[tuple[int, str]] = []
    for tok in tokens:
        text = str(tok).strip()
        if text.isdigit():
            value = int(text)
            name = by_value.get(value, f"region_{value}")
        elif text in table:
            value, name = table[text], text
        else:
            where = "its name table" if table else "no name table next to it: pass values"
            raise UserError(
                f"regions: {text!r} is neither an atlas value nor a region name of {atlas_path} ({where})"
            )
        if value == 0 or value not in present:
            raise UserError(f"regions: {name} (value {value}) has no voxel in {atlas_path}")
        out.append((value, name))
    if not out:
        raise UserError("regions: expected at least one atlas region")
    if len({v for v, _ in out}) != len(out):
        raise UserError(f"regions: a region is listed twice in {[n for _, n in out]}")
    if len(out) > 254:
        raise UserError(f"regions: at most 254 classes, got {len(out)}")
    return tuple(out)


def _same_grid(a, b) -> str | None:
    """What differs between the grids of SimpleITK images ``a`` and ``b`` (``None`` if nothing)."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    for what in ("Spacing", "Origin", "Direction"):
        va, vb = np.array(getattr(a, f"Get{what}")()), np.array(getattr(b, f"Get{what}")())
        if np.abs(va - vb).max() > _GRID_TOL:
            return f"{what.lower()} {tuple(np.round(va, 4))} vs {tuple(np.round(vb, 4))}"
    return None


def load_atlas_pair(
    template: str | Path = DEFAULT_TEMPLATE,
    atlas: str | Path = DEFAULT_ATLAS,
    regions: Sequence[str | int] = DEFAULT_REGIONS,
) -> AtlasPair:
    """Read and check a template and its atlas (what is refused: the module docstring).

    ``regions`` are atlas values or names of the atlas's name table; they become classes ``1..K``.
    """
    import SimpleITK as sitk

    template, atlas = Path(template).expanduser(), Path(atlas).expanduser()
    t_img = _read_image(template, "template", DEFAULT_TEMPLATE)
    a_img = _read_image(atlas, "atlas", DEFAULT_ATLAS)
    for img, role, path in ((t_img, "template", template), (a_img, "atlas", atlas)):
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise UserError(f"{role}: {path} must be a 3-D single-channel image")
    diff = _same_grid(t_img, a_img)
    if diff is not None:
        raise UserError(f"atlas: {atlas} is not on the grid of the template {template} ({diff}); "
                        f"resample it onto the template first")
    labels_raw = sitk.GetArrayFromImage(a_img)
    if not np.issubdtype(labels_raw.dtype, np.integer):
        if not np.array_equal(labels_raw, np.round(labels_raw)):
            raise UserError(f"atlas: {atlas} holds non-integer values; expected a label image")
        labels_raw = labels_raw.astype(np.int64)
    present = {int(v) for v in np.unique(labels_raw)}
    chosen = _resolve_regions(regions, atlas, present)
    lut = np.zeros(int(labels_raw.max()) + 1, dtype=np.uint8)
    for k, (value, _) in enumerate(chosen, start=1):
        lut[value] = k
    labels = lut[np.clip(labels_raw, 0, None)]
    image = sitk.GetArrayFromImage(t_img).astype(np.float32)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.Cast(t_img, sitk.sitkFloat32))
    on_tissue = float((image[labels > 0] > otsu.GetThreshold()).mean())
    if on_tissue < MIN_TISSUE_FRACTION:
        raise UserError(
            f"atlas: only {on_tissue:.0%} of the chosen regions' voxels in {atlas} lie on tissue of "
            f"{template} "
            f"(above its Otsu threshold {otsu.GetThreshold():g}; expected >= {MIN_TISSUE_FRACTION:.0%}): "
            f"the atlas is not aligned with this template"
        )
    spacing = tuple(float(s) for s in reversed(t_img.GetSpacing()))
    return AtlasPair(image, labels, spacing, chosen, template, atlas, t_img)


class AtlasSampler:
    """Draws cases of an :class:`AtlasPair` on an isotropic crop grid around its regions.

    The grid (``shape`` ``(z, y, x)``, ``spacing`` mm, the template's direction) covers the regions'
    bounding box plus ``margin_mm`` on every side, centred on it. Output voxel ``j`` sits at
    ``u = (j - (shape - 1) / 2) * spacing`` mm from the centre along the template's axes and samples
    the template at ``A u + t + d(u)`` (:class:`Deformation`): the image with linear interpolation of
    the template smoothed against aliasing (Gaussian sigma ``(spacing / spacing_in - 1) / 2`` voxels,
    scikit-image's ``rescale`` rule), the labels by nearest neighbour (``scipy.ndimage.map_coordinates``).
    """

    def __init__(self, pair: AtlasPair, spacing: float, margin_mm: float, deformation: Deformation) -> None:
        from scipy import ndimage

        if not isinstance(spacing, (int, float)) or not math.isfinite(spacing) or not 0.5 <= spacing <= 8:
            raise UserError(f"spacing: expected an isotropic voxel size in 0.5..8 mm, got {spacing!r}")
        if not isinstance(margin_mm, (int, float)) or not math.isfinite(margin_mm) or not (
            0 <= margin_mm <= 100
        ):
            raise UserError(f"margin: expected 0..100 mm, got {margin_mm!r}")
        deformation.validate()
        self.pair, self.deformation = pair, deformation
        self.spacing, self.margin_mm = float(spacing), float(margin_mm)
        sp = np.array(pair.spacing_zyx)
        idx = np.argwhere(pair.labels > 0)
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        extent = (hi - lo + 1) * sp + 2 * margin_mm
        self.shape = tuple(int(math.ceil(e / spacing - 1e-6)) for e in extent)
        self.centre_index = (lo + hi) / 2.0
        # the part of the template a deformed grid can reach (the largest displacement is well under 40 mm)
        half = np.array(self.shape) * spacing / 2.0 + 40.0
        sub_lo = np.maximum(np.floor(self.centre_index - half / sp).astype(int), 0)
        sub_hi = np.minimum(np.ceil(self.centre_index + half / sp).astype(int) + 1, pair.labels.shape)
        box = tuple(slice(a, b) for a, b in zip(sub_lo, sub_hi, strict=True))
        self._offset = sub_lo
        sigma = np.maximum(0.0, (spacing / sp - 1.0) / 2.0)
        image = ndimage.gaussian_filter(pair.image[box], sigma) if sigma.any() else pair.image[box].copy()
        crop_lo = np.maximum(np.floor(self.centre_index - extent / 2 / sp).astype(int) - sub_lo, 0)
        crop_hi = np.ceil(self.centre_index + extent / 2 / sp).astype(int) + 1 - sub_lo
        in_crop = image[tuple(slice(a, b) for a, b in zip(crop_lo, crop_hi, strict=True))]
        scale = float(np.percentile(in_crop, 99))
        if scale <= 0:
            raise UserError(f"template: {pair.template_path} is empty around the chosen regions")
        self._image = (image / scale).astype(np.float32)
        self._labels = pair.labels[box]
        self._coords = [((np.arange(n) - (n - 1) / 2.0) * spacing).astype(np.float32) for n in self.shape]

    def origin_xyz(self) -> tuple[float, float, float]:
        """Physical position (ITK's ``(x, y, z)``, mm) of output voxel ``(0, 0, 0)``."""
        step = self.spacing / np.array(self.pair.spacing_zyx)
        first = self.centre_index - (np.array(self.shape) - 1) / 2.0 * step
        to_physical = self.pair.reference.TransformContinuousIndexToPhysicalPoint
        return tuple(to_physical([float(v) for v in first[::-1]]))

    def case(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One case: ``(image float32, labels uint8)``, both of ``shape``; every draw comes from ``rng``."""
        from scipy import ndimage

        d = self.deformation
        angles = np.deg2rad(rng.uniform(-d.rotation_deg, d.rotation_deg, 3))
        scales = 1.0 + rng.uniform(-d.scale, d.scale, 3)
        shift = rng.uniform(-d.translation_mm, d.translation_mm, 3)
        affine = rotation_matrix(angles) @ np.diag(scales).astype(np.float32)
        uz, uy, ux = np.meshgrid(*self._coords, indexing="ij")
        u = np.stack([uz, uy, ux])  # 3 x Z x Y x X, mm
        q = np.tensordot(affine, u, axes=(1, 0)) + shift[:, None, None, None].astype(np.float32)
        for k in range(3):
            q[k] += np.float32(d.elastic_mm) * smooth_field(rng, self._coords, n_knots=d.elastic_knots)
        sp = np.array(self.pair.spacing_zyx)
        index = (self.centre_index - self._offset)[:, None, None, None] + q / sp[:, None, None, None]
        image = ndimage.map_coordinates(self._image, index, order=1, mode="nearest")
        labels = ndimage.map_coordinates(self._labels, index, order=0, mode="nearest")
        image *= np.exp(np.float32(d.bias) * smooth_field(rng, self._coords, n_knots=3))
        gamma = float(np.exp(rng.uniform(-d.gamma, d.gamma)))
        image = np.clip(image, 0.0, None) ** np.float32(gamma)
        image += np.float32(d.noise) * rng.standard_normal(image.shape, dtype=np.float32)
        return image.astype(np.float32), labels.astype(np.uint8)


def generate_atlas_case(sampler: AtlasSampler, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Case ``index`` of a dataset drawn with ``seed`` (``sampler.case(case_rng(seed, index))``)."""
    from recokd.data.phantoms import case_rng

    return sampler.case(case_rng(seed, index))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_atlas_dataset(
    dataset_id: int,
    *,
    num_cases: int = 40,
    num_test_cases: int = 0,
    seed: int = 0,
    spacing: float = 2.0,
    margin_mm: float = 6.0,
    template: str | Path = DEFAULT_TEMPLATE,
    atlas: str | Path = DEFAULT_ATLAS,
    regions: Sequence[str | int] = DEFAULT_REGIONS,
    name: str = "Subcortical",
    raw_dir: str | Path | None = None,
    overwrite: bool = False,
    deformation: Deformation = Deformation(),
    progress: bool = False,
) -> Path:
    """Write ``<raw_dir>/Dataset{dataset_id:03d}_{name}/`` from a template and its atlas; returns the folder.

    Layout as :func:`recokd.data.phantoms.write_phantom_dataset` (``imagesTr``/``labelsTr``, held-out
    cases ``num_cases ..`` in ``imagesTs``/``labelsTs``, ``dataset.json`` with channel ``T1``), the
    generator settings under ``reco_kd_atlas``. Every input is checked before anything is written; a
    case in which a class vanishes (a spacing too coarse for a region) is refused.
    """
    import SimpleITK as sitk

    from recokd.data.phantoms import FILE_ENDING, _check_int, prepare_dataset_folder, write_dataset_atomically

    dataset_id = _check_int("dataset_id", dataset_id, 1, 999)
    num_cases = _check_int("num_cases", num_cases, 2)
    num_test_cases = _check_int("num_test_cases", num_test_cases, 0)
    seed = _check_int("seed", seed, 0)
    raw, target = prepare_dataset_folder(raw_dir, dataset_id, name, overwrite)
    pair = load_atlas_pair(template, atlas, regions)
    sampler = AtlasSampler(pair, spacing, margin_mm, deformation)
    names = pair.class_names
    origin, direction = sampler.origin_xyz(), pair.reference.GetDirection()

    def write_volume(array: np.ndarray, path: Path) -> None:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((sampler.spacing,) * 3)
        img.SetOrigin(origin)
        img.SetDirection(direction)
        sitk.WriteImage(img, str(path), useCompression=True)

    def write(folder: Path) -> None:
        splits = ["Tr", "Ts"] if num_test_cases else ["Tr"]
        for split in splits:
            (folder / f"images{split}").mkdir()
            (folder / f"labels{split}").mkdir()
        counts = np.zeros((num_cases, len(names) + 1), dtype=np.int64)
        indices = range(num_cases + num_test_cases)
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc="atlas cases", unit="case")
        for i in indices:
            image, labels = generate_atlas_case(sampler, seed, i)
            count = np.bincount(labels.ravel(), minlength=len(names) + 1)
            if (count[1:] == 0).any():
                missing = [n for n, c in zip(names, count[1:], strict=True) if c == 0]
                raise UserError(f"spacing: at {sampler.spacing:g} mm case {i} has no voxel of "
                                f"{', '.join(missing)}; choose a finer spacing")
            split = "Tr" if i < num_cases else "Ts"
            case = f"{name}_{i:03d}"
            write_volume(image, folder / f"images{split}" / f"{case}_0000{FILE_ENDING}")
            write_volume(labels, folder / f"labels{split}" / f"{case}{FILE_ENDING}")
            if i < num_cases:
                counts[i] = count
        _write_dataset_json(folder, name, num_cases, num_test_cases, seed, sampler, counts)

    write_dataset_atomically(raw, target, write)
    return target


def _write_dataset_json(
    folder: Path, name: str, num_cases: int, num_test_cases: int, seed: int, sampler: AtlasSampler,
    counts: np.ndarray,
) -> None:
    """nnU-Net's ``dataset.json``, the generator's settings and the class sizes under ``reco_kd_atlas``."""
    from recokd.data.phantoms import FILE_ENDING

    pair = sampler.pair
    names = pair.class_names
    means = counts.mean(axis=0)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "template": str(pair.template_path),
        "template_sha256": _sha256(pair.template_path),
        "atlas": str(pair.atlas_path),
        "atlas_sha256": _sha256(pair.atlas_path),
        "regions": {n: {"label": k, "atlas_value": v} for k, (v, n) in enumerate(pair.regions, start=1)},
        "spacing_mm": sampler.spacing,
        "margin_mm": sampler.margin_mm,
        "shape_zyx": list(sampler.shape),
        "deformation": sampler.deformation.__dict__,
        "case_ids_train": [0, num_cases - 1],
        "case_ids_test": [num_cases, num_cases + num_test_cases - 1] if num_test_cases else None,
        "test_labels": "labelsTs/ (not read by nnU-Net; for evaluating predictions on imagesTs)"
        if num_test_cases else None,
        "mean_voxels_per_case": {
            n: round(float(m), 1) for n, m in zip(["background", *names], means, strict=True)
        },
    }
    dataset = {
        "name": name,
        "description": f"Deformed crops of {pair.template_path.name} labelled by {pair.atlas_path.name} "
                       f"(reco-kd atlas-dataset).",
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, **{n: k for k, n in enumerate(names, start=1)}},
        "numTraining": num_cases,
        "numTest": num_test_cases,
        "file_ending": FILE_ENDING,
        "reco_kd_atlas": meta,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
