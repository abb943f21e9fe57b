"""Synthetic CT-like abdominal phantoms: the label set and :func:`generate_case` (one case).

:mod:`recokd.data.phantoms` writes whole nnU-Net raw datasets from these cases.

Each case is a torso with HU-like intensities (air outside, subcutaneous fat, muscle wall,
visceral soft tissue and fat, a vertebral column) and seven labelled structures of very different
sizes (see :data:`PHANTOM_CLASSES`): one large organ, three medium organs and three small
structures. Intensities of several classes overlap on purpose (liver vs spleen, lesion vs
visceral tissue, adrenal vs muscle, vessel vs renal cortex) so that a network has to use shape and
context, and the small structures are where a weak student loses Dice first.

Conventions
-----------
- Arrays are indexed ``(z, y, x)`` (numpy order, as ``SimpleITK.GetArrayFromImage`` returns
  them); ``shape`` and ``spacing`` are given in the same order, e.g. ``spacing=(2.5, 1, 1)`` is
  2.5 mm slices with 1 mm pixels.
- With the identity direction matrix that the writer uses (ITK's LPS convention), increasing
  ``x`` points to the patient's left, increasing ``y`` to posterior and increasing ``z`` to
  superior: the liver sits at low ``x`` (patient right), spleen at high ``x``.
- The anatomy is laid out relative to the field of view (every axis spans ``[-1, 1]``), so every
  class is present for any grid of at least 16 voxels per axis and voxel counts scale with the
  number of voxels, not with ``spacing``. ``spacing`` sets the physical voxel size (written to the
  image header) and the scanner point-spread function's width in voxels. Pick ``shape`` and
  ``spacing`` with a similar physical extent per axis (e.g. ``(26, 64, 64)`` at
  ``(2.5, 1, 1)``) for a physically isotropic torso.
- Images are ``float32`` HU clipped to ``[-1024, 3071]`` (nnU-Net's ``CT`` normalisation);
  labels are ``uint8``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from recokd.data.shapes import axis_coords, deformed_ellipsoid, smooth_field, tube
from recokd.errors import UserError

__all__ = [
    "HU_RANGE",
    "LABELS",
    "PHANTOM_CLASSES",
    "PhantomClass",
    "generate_case",
    "validate_geometry",
    "validate_imaging",
    "validate_small_scale",
]

#: intensity range of the images (HU), the range a 12-bit CT scanner stores
HU_RANGE: tuple[float, float] = (-1024.0, 3071.0)


@dataclass(frozen=True)
class PhantomClass:
    """One labelled structure of the phantom.

    ``size`` is ``"large"``, ``"medium"`` or ``"small"``; ``typical_voxels`` is the approximate
    voxel count at the default 64^3 grid (counts scale with the number of voxels).
    """

    label: int
    name: str
    size: str
    mean_hu: float
    typical_voxels: int
    description: str


#: the labelled structures, in label order (0 is background)
PHANTOM_CLASSES: tuple[PhantomClass, ...] = (
    PhantomClass(1, "liver", "large", 60.0, 22000,
                 "liver-like organ in the right upper abdomen; HU close to the spleen"),
    PhantomClass(2, "spleen", "medium", 52.0, 850,
                 "spleen-like organ, left posterior upper abdomen; HU overlaps the liver"),
    PhantomClass(3, "kidney_right", "medium", 150.0, 980,
                 "kidney-like ovoid (bright cortex, darker medulla), patient right"),
    PhantomClass(4, "kidney_left", "medium", 150.0, 980,
                 "same appearance as kidney_right: only position tells them apart"),
    PhantomClass(5, "vessel", "small", 170.0, 255,
                 "thin contrast-filled artery-like tube in front of the spine; HU like renal cortex"),
    PhantomClass(6, "adrenal", "small", 35.0, 90,
                 "small gland above the left kidney, soft-tissue HU, visible only through its fat pad"),
    PhantomClass(7, "lesion", "small", 20.0, 110,
                 "hypodense lesion inside the liver, carved out of the liver label"),
)

#: nnU-Net ``labels`` mapping (name -> integer), background first
LABELS: dict[str, int] = {"background": 0, **{c.name: c.label for c in PHANTOM_CLASSES}}

_ID = {c.name: c.label for c in PHANTOM_CLASSES}
_MEAN_HU = {c.name: c.mean_hu for c in PHANTOM_CLASSES}
# unlabelled tissues (HU)
_AIR, _FAT, _MUSCLE, _VISCERA, _BONE_CORE, _BONE_RIM = -1000.0, -95.0, 45.0, 25.0, 250.0, 650.0
_KIDNEY_MEDULLA = 95.0
_MIN_SHAPE = 16
# voxel-sized structures are defined at this reference grid and floored to one voxel elsewhere
_REF_N = 64


def validate_geometry(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, int, int],
                                                                              tuple[float, float, float]]:
    """Check ``shape`` (3 ints >= 16) and ``spacing`` (3 positive finite floats), ``(z, y, x)``.

    Returns them as tuples; raises :class:`~recokd.errors.UserError` naming the bad field.
    """
    try:
        shp = tuple(int(s) for s in shape)
        if any(int(s) != s for s in shape):
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"shape: expected three integers (z, y, x), got {shape!r}") from None
    if len(shp) != 3 or any(s < _MIN_SHAPE for s in shp):
        raise UserError(f"shape: expected three integers >= {_MIN_SHAPE} (z, y, x), got {tuple(shape)!r}")
    try:
        spc = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        spc = ()
    if len(spc) != 3 or not all(np.isfinite(s) and s > 0 for s in spc):
        raise UserError(f"spacing: expected three positive numbers in mm (z, y, x), got {spacing!r}")
    return shp, spc  # type: ignore[return-value]


def validate_imaging(noise_hu: float, psf_mm: float) -> None:
    """Check the noise level (HU) and scanner blur (mm): finite numbers >= 0, else UserError."""
    for field, value, unit in (("noise_hu", noise_hu, "HU"), ("psf_mm", psf_mm, "mm")):
        ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        if not (ok and np.isfinite(value) and value >= 0):
            raise UserError(f"{field}: expected a number >= 0 ({unit}), got {value!r}")


def validate_small_scale(small_scale: float) -> None:
    """Check the small-structure scale: a finite number in ``[0.5, 4]``, else UserError."""
    ok = isinstance(small_scale, (int, float, np.number)) and not isinstance(small_scale, bool)
    if not (ok and np.isfinite(small_scale) and 0.5 <= small_scale <= 4.0):
        raise UserError(f"small_scale: expected a number in 0.5..4 (1 = original sizes), got {small_scale!r}")


def _small_radius(r_ref_vox: float, n: int) -> float:
    """FOV-relative radius of a structure that is ``r_ref_vox`` voxels at 64 voxels, >= 1 voxel."""
    return max(r_ref_vox * 2.0 / _REF_N, 2.0 / n)


def _nearest_index(coords: Sequence[np.ndarray], point: Sequence[float]) -> tuple[int, int, int]:
    """Index of the voxel whose centre is nearest to the FOV-relative ``point``."""
    return tuple(int(np.argmin(np.abs(c - p))) for c, p in zip(coords, point, strict=True))  # type: ignore


def generate_case(
    rng: np.random.Generator,
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    noise_hu: float = 20.0,
    psf_mm: float = 0.6,
    small_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom case: ``(image float32 HU, label uint8)``, both of ``shape`` ``(z, y, x)``.

    Everything random comes from ``rng``, so the same generator state gives byte-identical arrays.
    ``noise_hu`` is the standard deviation of the (slightly spatially correlated) image noise;
    ``psf_mm`` the in-plane/through-plane scanner blur in mm, combined with a half-voxel
    partial-volume blur. ``small_scale`` multiplies the cross-section radii of the three small
    structures (vessel, adrenal, lesion; the vessel's length is unchanged), so their voxel counts
    grow about ``small_scale**2`` (vessel) to ``small_scale**3`` (adrenal, lesion) times: at a
    32^3 grid, ``small_scale=2`` gives them the voxel sizes they have at the 64^3 reference grid
    (~100 voxels each) instead of 7-30 voxels. ``1`` (default) draws the generator's original
    cases. Every class of :data:`PHANTOM_CLASSES` is present in the label map.
    """
    shp, spc = validate_geometry(shape, spacing)
    validate_imaging(noise_hu, psf_mm)
    validate_small_scale(small_scale)
    coords = [axis_coords(n) for n in shp]
    cz, cy, cx = coords
    u = rng.uniform

    def jitter(a: float) -> np.ndarray:
        return u(-a, a, size=3)

    def angles(a: float) -> np.ndarray:
        return u(-a, a, size=3)

    # --- body: an elliptic cylinder along z with a wavy surface ---------------------------------
    s = u(0.93, 1.03)
    by0, bx0 = u(-0.02, 0.06), u(-0.04, 0.04)
    ry, rx = 0.70 * s, 0.90 * s
    f_body = (np.sqrt(((cy[None, :, None] - by0) / ry) ** 2 + ((cx[None, None, :] - bx0) / rx) ** 2) - 1.0
              + 0.05 * smooth_field(rng, coords, n_knots=4)).astype(np.float32)
    body = f_body < 0
    interior = f_body < -0.15  # inside the abdominal wall
    shift = jitter(0.05) + np.array([0.0, by0, bx0])

    # --- spine: posterior midline column (unlabelled bone) ---------------------------------------
    spine_y, spine_x = by0 + 0.58 * ry, bx0 + u(-0.02, 0.02)
    wobble = 0.02 * np.sin(np.pi * cz + u(0, 2 * np.pi))
    spine_r = (0.13 * u(0.9, 1.1), 0.12 * u(0.9, 1.1))
    spine_path = (spine_y + wobble, np.full_like(wobble, spine_x))
    spine = tube(coords, (-2.0, 2.0), *spine_path, spine_r)
    spine_core = tube(coords, (-2.0, 2.0), *spine_path, (0.7 * spine_r[0], 0.7 * spine_r[1]))

    label = np.zeros(shp, dtype=np.uint8)
    centers: dict[str, np.ndarray] = {}

    # --- large and medium organs (later ones overwrite earlier ones) -----------------------------
    # liver: a big right lobe plus a flatter left lobe reaching across the midline anteriorly
    c = s * np.array([0.22, -0.03, -0.38]) + shift + jitter(0.03)
    size = u(0.94, 1.06) * s
    f_liver = deformed_ellipsoid(rng, coords, c, np.array([0.64, 0.54, 0.54]) * u(0.96, 1.04, 3) * size,
                                 angles=angles(0.15), deform=0.15)
    c_left = c + np.array([0.12, -0.28, 0.42]) + jitter(0.03)
    f_left = deformed_ellipsoid(rng, coords, c_left, np.array([0.36, 0.23, 0.36]) * size,
                                angles=np.array([0.3, 0.0, 0.0]) + angles(0.15), deform=0.15)
    np.minimum(f_liver, f_left, out=f_liver)
    label[(f_liver < 0) & interior & ~spine] = _ID["liver"]
    centers["liver"] = c

    c = s * np.array([0.42, 0.19, 0.45]) + shift + jitter(0.03)
    f = deformed_ellipsoid(rng, coords, c, np.array([0.28, 0.20, 0.12]) * u(0.94, 1.06, 3) * s,
                           angles=np.array([-0.5, 0.0, 0.0]) + angles(0.2), deform=0.15)
    label[(f < 0) & interior & ~spine] = _ID["spleen"]
    centers["spleen"] = c

    f_kidney = {}
    kidney_r = np.array([0.30, 0.17, 0.15])
    for name, c0 in (("kidney_right", [-0.12, 0.30, -0.37]), ("kidney_left", [-0.04, 0.30, 0.37])):
        c = s * np.array(c0) + shift + jitter(0.03)
        tilt = np.array([0.0, 0.0, 0.25 * np.sign(c0[2])])  # upper poles lean towards the spine
        f = deformed_ellipsoid(rng, coords, c, kidney_r * u(0.94, 1.06, 3) * s,
                               angles=tilt + angles(0.15), deform=0.12)
        label[(f < 0) & interior & ~spine] = _ID[name]
        f_kidney[name] = f
        centers[name] = c

    # --- small structures -----------------------------------------------------------------------
    # adrenal: flat gland above/medial to the left kidney, wrapped in a fat pad
    kl = centers["kidney_left"]
    c = kl + np.array([kidney_r[0] * s + 0.10, -0.02, -0.10]) + jitter(0.02)
    radii = [_small_radius(small_scale * r * u(0.85, 1.15), n)
             for r, n in zip((4.5, 1.7, 2.8), shp, strict=True)]
    f_adrenal = deformed_ellipsoid(rng, coords, c, radii, angles=np.array([0.0, 0.0, 0.5]) + angles(0.3),
                                   deform=0.08, n_knots=3)
    label[f_adrenal < 0] = _ID["adrenal"]
    centers["adrenal"] = c

    # vessel: thin tube in front of the spine, left of the midline, over half the height
    z0 = u(-0.75, -0.55)
    z1 = z0 + u(0.95, 1.15)
    phase = u(0, 2 * np.pi, 2)
    path_y = spine_y - spine_r[0] - 0.13 + 0.04 * np.sin(1.3 * np.pi * cz + phase[0])
    path_x = spine_x + 0.10 + 0.05 * np.sin(1.1 * np.pi * cz + phase[1])
    r_vessel = small_scale * u(1.3, 1.8)
    vessel = tube(coords, (z0, z1), path_y, path_x,
                  (_small_radius(r_vessel, shp[1]), _small_radius(r_vessel, shp[2])))
    label[vessel] = _ID["vessel"]
    zc = 0.5 * (z0 + z1)
    iz = int(np.argmin(np.abs(cz - zc)))
    centers["vessel"] = np.array([zc, path_y[iz], path_x[iz]])

    # lesion: a blob deep inside the liver, only liver voxels become lesion
    deep = np.flatnonzero(((f_liver < -0.45) & (label == _ID["liver"])).ravel())
    if deep.size:
        idx = np.unravel_index(deep[rng.integers(deep.size)], shp)
        c = np.array([coords[a][idx[a]] for a in range(3)])
    else:  # pragma: no cover - only for degenerate grids
        c = centers["liver"]
    r_lesion = small_scale * u(2.4, 3.6)
    radii = [_small_radius(r_lesion * u(0.85, 1.15), n) for n in shp]
    f_lesion = deformed_ellipsoid(rng, coords, c, radii, angles=angles(np.pi), deform=0.1, n_knots=3)
    label[(f_lesion < 0) & (label == _ID["liver"])] = _ID["lesion"]
    centers["lesion"] = c

    # every class present: a structure squeezed out entirely keeps at least its centre voxel
    present = np.bincount(label.ravel(), minlength=len(LABELS))
    for cls in PHANTOM_CLASSES:
        if present[cls.label] == 0:
            label[_nearest_index(coords, centers[cls.name])] = cls.label

    # --- intensities ----------------------------------------------------------------------------
    hu = {k: v + rng.normal(0.0, 6.0) for k, v in _MEAN_HU.items()}  # per-case contrast variation
    img = np.full(shp, _AIR, dtype=np.float32)
    img[body] = _FAT + rng.normal(0, 5)
    img[f_body < -0.07] = _MUSCLE + rng.normal(0, 5)
    img[interior] = _VISCERA + rng.normal(0, 5)
    visceral_fat = interior & (smooth_field(rng, coords, n_knots=9) > 1.2) & (label == 0)
    img[visceral_fat] = _FAT
    img[(f_adrenal < 1.2) & (label == 0)] = _FAT  # the adrenal's fat pad
    img[spine] = _BONE_RIM
    img[spine_core] = _BONE_CORE
    for cls in PHANTOM_CLASSES:
        img[label == cls.label] = hu[cls.name]
    for name, f in f_kidney.items():
        img[(label == _ID[name]) & (f < -0.4)] = _KIDNEY_MEDULLA + (hu[name] - _MEAN_HU[name])
    texture = smooth_field(rng, coords, n_knots=9)
    img[body] += (8.0 * texture[body]).astype(np.float32)

    # partial volume + scanner blur, then correlated noise
    sigma = [float(np.hypot(0.5, psf_mm / sp)) for sp in spc]
    img = ndi.gaussian_filter(img, sigma, mode="nearest")
    if noise_hu > 0:
        noise = ndi.gaussian_filter(rng.standard_normal(shp, dtype=np.float32), 0.5, mode="wrap")
        img += (noise_hu / float(noise.std())) * noise
    np.clip(img, *HU_RANGE, out=img)
    return img.astype(np.float32, copy=False), label

