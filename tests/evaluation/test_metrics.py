"""Metrics against values computed by hand on constructed volumes (arrays and spacing in z, y, x)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recokd.errors import UserError
from recokd.evaluation.metrics import (
    EMPTY_MASK_CONVENTION_TEXT,
    EmptyMaskConvention,
    binary_metrics,
    compute_case_metrics,
    dice,
    hd95_mm,
    nsd,
    resolve_tolerances,
)


def cube(shape: tuple[int, ...], corner: tuple[int, ...], side: int) -> np.ndarray:
    a = np.zeros(shape, dtype=bool)
    a[tuple(slice(c, c + side) for c in corner)] = True
    return a


def ball(shape: tuple[int, int, int], centre_mm: tuple[float, float, float], radius_mm: float,
         spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of ``centre_mm`` (physical coordinates)."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True)) <= radius_mm ** 2


G = cube((10, 10, 10), (2, 2, 2), 4)        # 4x4x4 cube: 64 voxels, 56 boundary voxels
P_Z1 = cube((10, 10, 10), (3, 2, 2), 4)     # the same cube one voxel further along z


def test_dice_of_known_overlaps() -> None:
    assert dice(G, G) == 1.0
    assert dice(P_Z1, G) == pytest.approx(2 * 48 / 128)                                 # 3 of 4 layers shared
    assert dice(cube((10, 10, 10), (2, 2, 4), 4), G) == pytest.approx(2 * 32 / 128)     # 2 of 4 columns
    assert dice(cube((10, 10, 10), (6, 6, 6), 4), G) == 0.0                             # disjoint
    assert dice(cube((10, 10, 10), (2, 2, 2), 2), G) == pytest.approx(2 * 8 / 72)      # nested


def test_identical_masks_are_perfect() -> None:
    m = binary_metrics(G, G, (2.5, 1.0, 1.0), tolerance_mm=0.0)
    assert (m.dice, m.hd95_mm, m.nsd, m.empty) == (1.0, 0.0, 1.0, "none")


def test_shifted_cube_hd95_is_the_shift_in_mm_along_the_shifted_axis() -> None:
    # the top face of the shifted cube (16 of 56 boundary voxels, > 5 %) is exactly k slices from the
    # reference's top face and no boundary voxel is further: HD95 = k * spacing of that axis
    for k in (1, 2, 3):
        p = cube((12, 10, 10), (2 + k, 2, 2), 4)
        g = cube((12, 10, 10), (2, 2, 2), 4)
        assert hd95_mm(p, g, (1.0, 1.0, 1.0)) == pytest.approx(k)
        assert hd95_mm(p, g, (2.5, 1.0, 1.0)) == pytest.approx(2.5 * k)   # shift along the 2.5 mm axis
        assert hd95_mm(p, g, (1.0, 2.5, 2.5)) == pytest.approx(k)          # in-plane spacing irrelevant


def box_surfels(corner: tuple[int, int, int], size: tuple[int, int, int],
                spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The surface of a box of voxels as DeepMind's surface-distance discretises it, written out by hand.

    Surfels sit on the corners of the voxel grid (positions ``index * spacing``, mm) whose 2x2x2
    neighbourhood the surface crosses: for a box, the corners on its boundary. Each carries the area
    of the marching-cubes surface through its neighbourhood: a face-interior corner a flat square
    (the product of the two in-face spacings), an edge corner along axis ``a`` a strip tilted at
    45 degrees (``s_a * sqrt(s_b^2 + s_c^2) / 2``), a vertex a triangle through the three edge
    midpoints (``sqrt((s1 s2)^2 + (s0 s2)^2 + (s0 s1)^2) / 8``).
    """
    s = np.asarray(spacing, dtype=float)
    points, areas = [], []
    ranges = [range(c, c + n + 1) for c, n in zip(corner, size, strict=True)]
    for idx in np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3):
        extreme = [i in (c, c + n) for i, c, n in zip(idx, corner, size, strict=True)]
        k = sum(extreme)
        if k == 0:
            continue
        if k == 1:
            a = extreme.index(True)
            area = float(np.prod(np.delete(s, a)))
        elif k == 2:
            a = extreme.index(False)
            b, c = np.delete(s, a)
            area = s[a] * math.hypot(b, c) / 2
        else:
            area = math.sqrt((s[1] * s[2]) ** 2 + (s[0] * s[2]) ** 2 + (s[0] * s[1]) ** 2) / 8
        points.append(idx * s)
        areas.append(area)
    return np.array(points), np.array(areas)


def reference_box_nsd(p_box, g_box, spacing, tolerance_mm: float) -> float:
    """Surface-area NSD (Nikolov et al.) of two boxes ``(corner, size)`` from :func:`box_surfels`."""
    (pp, pa), (gp, ga) = box_surfels(*p_box, spacing), box_surfels(*g_box, spacing)
    d = np.linalg.norm(pp[:, None] - gp[None], axis=-1)  # (P surfels, G surfels), mm
    within = pa[d.min(1) <= tolerance_mm + 1e-9].sum() + ga[d.min(0) <= tolerance_mm + 1e-9].sum()
    return float(within / (pa.sum() + ga.sum()))


def box_mask(shape, corner, size) -> np.ndarray:
    a = np.zeros(shape, dtype=bool)
    a[tuple(slice(c, c + n) for c, n in zip(corner, size, strict=True))] = True
    return a


@pytest.mark.parametrize(
    "p_box, g_box, spacing, tol",
    [
        (((3, 2, 2), (4, 4, 4)), ((2, 2, 2), (4, 4, 4)), (1.0, 1.0, 1.0), 0.5),   # shifted by 1 along z
        (((3, 2, 2), (4, 4, 4)), ((2, 2, 2), (4, 4, 4)), (2.5, 1.0, 1.0), 1.0),   # ... at 2.5 mm slices
        (((3, 2, 2), (4, 4, 4)), ((2, 2, 2), (4, 4, 4)), (2.5, 1.0, 1.0), 2.5),
        (((2, 3, 2), (6, 6, 6)), ((2, 2, 2), (6, 6, 6)), (2.0, 0.8, 1.2), 0.5),   # shifted in-plane
        (((2, 2, 2), (3, 5, 4)), ((2, 2, 2), (4, 4, 4)), (3.0, 0.7, 0.9), 0.8),   # different boxes
        (((0, 0, 1), (4, 5, 3)), ((0, 1, 0), (5, 4, 4)), (1.5, 1.0, 0.6), 1.0),   # touching the border
    ],
)
def test_nsd_is_the_surface_area_definition(p_box, g_box, spacing, tol) -> None:
    shape = (10, 10, 10)
    p, g = box_mask(shape, *p_box), box_mask(shape, *g_box)
    expected = reference_box_nsd(p_box, g_box, spacing, tol)
    assert nsd(p, g, spacing, tol) == pytest.approx(expected, abs=1e-6)
    assert nsd(g, p, spacing, tol) == pytest.approx(expected, abs=1e-6)  # symmetric


def test_nsd_agrees_with_deepminds_surface_distance() -> None:
    """The independent reference: DeepMind's surface-distance (the NSD paper's code), on blobs."""
    sd = pytest.importorskip("surface_distance")  # a dev dependency (pyproject.toml)
    rng = np.random.default_rng(0)
    for spacing, tol in (((1.0, 1.0, 1.0), 1.0), ((2.5, 0.8, 0.8), 1.0), ((3.0, 1.0, 0.5), 2.0)):
        g = ball((16, 24, 24), (16.0, 9.0, 6.0), 6.0, spacing) | (rng.random((16, 24, 24)) > 0.97)
        p = ball((16, 24, 24), (18.0, 10.0, 6.5), 6.5, spacing)
        expected = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(g, p, spacing), tol)
        assert nsd(p, g, spacing, tol) == pytest.approx(expected, abs=1e-5)


def test_nsd_reads_higher_than_counting_boundary_voxels_on_anisotropic_spacing() -> None:
    # the documented difference (docs/evaluation-conventions.md): 6^3 cube shifted by one voxel,
    # 2 x 0.8 x 1.2 mm, 0.5 mm tolerance: boundary-voxel count 0.658 (25/38), surface area 0.779
    p, g = box_mask((12, 12, 12), (3, 3, 3), (6, 6, 6)), box_mask((12, 12, 12), (2, 3, 3), (6, 6, 6))
    assert nsd(p, g, (2.0, 0.8, 1.2), 0.5) == pytest.approx(0.77874, abs=1e-5)
    assert reference_box_nsd(((3, 3, 3), (6,) * 3), ((2, 3, 3), (6,) * 3), (2.0, 0.8, 1.2), 0.5) == (
        pytest.approx(0.77874, abs=1e-5))


def test_sphere_against_shifted_sphere() -> None:
    g = ball((40, 40, 40), (20.0, 20.0, 20.0), 10.0, (1.0, 1.0, 1.0))
    for k in (1, 2, 3):
        p = ball((40, 40, 40), (20.0 + k, 20.0, 20.0), 10.0, (1.0, 1.0, 1.0))
        # a continuous sphere gives 0.95 k (|k cos(theta)|, cos uniform); digital caps are flat
        assert 0.9 * k <= hd95_mm(p, g, (1.0, 1.0, 1.0)) <= k + 1e-6
        assert nsd(p, g, (1.0, 1.0, 1.0), float(k)) == pytest.approx(1.0)


def test_anisotropic_spacing_scales_hd95() -> None:
    # a 10 mm-radius physical sphere sampled at 2.5 x 1 x 1 mm, moved 2 slices (5 mm) along z
    spc = (2.5, 1.0, 1.0)
    g = ball((20, 40, 40), (25.0, 20.0, 20.0), 10.0, spc)
    p = ball((20, 40, 40), (30.0, 20.0, 20.0), 10.0, spc)
    assert 0.9 * 5.0 <= hd95_mm(p, g, spc) <= 5.0 + 1e-6
    assert hd95_mm(p, g, (1.0, 1.0, 1.0)) <= 2.0 + 1e-6   # voxel units when the spacing is ignored
    # moved 5 voxels (5 mm) in-plane instead: the same physical distance
    p_x = ball((20, 40, 40), (25.0, 20.0, 25.0), 10.0, spc)
    assert 0.9 * 5.0 <= hd95_mm(p_x, g, spc) <= 5.0 + 1e-6


def test_empty_mask_conventions() -> None:
    empty = np.zeros_like(G)
    both = binary_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (both.dice, both.hd95_mm, both.nsd, both.empty) == (1.0, 0.0, 1.0, "both")
    for pred, gt, case in ((empty, G, "pred"), (G, empty, "gt")):
        m = binary_metrics(pred, gt, (1.0, 1.0, 1.0))
        assert (m.dice, m.nsd, m.empty) == (0.0, 0.0, case)
        assert math.isnan(m.hd95_mm)
        assert m.convention == "recokd-empty-v1/hd95-nan"
        capped = binary_metrics(pred, gt, (1.0, 1.0, 1.0), convention=EmptyMaskConvention(50.0))
        assert capped.hd95_mm == 50.0 and capped.convention == "recokd-empty-v1/hd95-max-50mm"
    assert hd95_mm(empty, empty, (1, 1, 1)) == 0.0 and nsd(empty, empty, (1, 1, 1)) == 1.0
    assert dice(empty, empty) == 1.0 and dice(empty, G) == 0.0
    assert "both prediction and ground truth empty: Dice 1, HD95 0 mm, NSD 1" in EMPTY_MASK_CONVENTION_TEXT
    desc = EmptyMaskConvention().as_dict()
    assert desc["both_empty"] == {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}
    with pytest.raises(UserError, match="hd95_one_empty_mm"):
        EmptyMaskConvention(-1.0)


def test_multi_class_case() -> None:
    gt = np.zeros((10, 10, 10), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[G] = 1
    pred[P_Z1] = 1
    gt[7:9, 7:9, 7:9] = 2
    pred[7:9, 7:9, 7:9] = 2
    pred[0, 0, 0] = 4                       # class 4: only in the prediction; class 3: nowhere
    labels = {"a": 1, "b": 2, "c": 3, "d": 4, "ab": (1, 2)}
    res = compute_case_metrics(pred, gt, labels, (2.5, 1.0, 1.0), {"default": 1.0, "b": 0.0})
    assert res["a"].dice == pytest.approx(0.75) and res["a"].hd95_mm == pytest.approx(2.5)
    assert res["a"].nsd == pytest.approx(
        reference_box_nsd(((3, 2, 2), (4, 4, 4)), ((2, 2, 2), (4, 4, 4)), (2.5, 1.0, 1.0), 1.0), abs=1e-6)
    assert (res["b"].dice, res["b"].hd95_mm, res["b"].nsd, res["b"].nsd_tolerance_mm) == (1.0, 0.0, 1.0, 0.0)
    assert (res["c"].dice, res["c"].hd95_mm, res["c"].nsd, res["c"].empty) == (1.0, 0.0, 1.0, "both")
    assert res["d"].empty == "gt" and res["d"].dice == 0.0 and math.isnan(res["d"].hd95_mm)
    assert res["ab"].gt_voxels == 64 + 8 and res["ab"].dice == pytest.approx(2 * (48 + 8) / 144)


def test_single_slice_volume_is_scored_in_2d() -> None:
    # nnU-Net reads 2D images as one slice with a fake 999 mm z spacing; it must not matter
    gt = np.zeros((1, 12, 12), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 3:7, 3:7] = 1
    pred[0, 3:7, 5:9] = 1                                   # moved 2 pixels along x (0.5 mm each)
    res = compute_case_metrics(pred, gt, {"sq": 1}, (999.0, 1.0, 0.5), 0.4)
    assert res["sq"].hd95_mm == pytest.approx(1.0)
    assert res["sq"].dice == pytest.approx(0.5)


def test_bad_input_is_a_user_error() -> None:
    with pytest.raises(UserError, match="spacing"):
        hd95_mm(G, G, (1.0, 1.0))
    with pytest.raises(UserError, match="spacing"):
        nsd(G, G, (1.0, 0.0, 1.0))
    with pytest.raises(UserError, match="shapes differ"):
        dice(G, G[:5])
    with pytest.raises(UserError, match="tolerance"):
        nsd(G, G, (1, 1, 1), -1.0)
    with pytest.raises(UserError, match="unknown class"):
        resolve_tolerances(["a", "b"], {"c": 1.0})
    assert resolve_tolerances(["a", "b"], {"b": 2.0}) == {"a": 1.0, "b": 2.0}
    assert resolve_tolerances(["a", "b"], 0.5) == {"a": 0.5, "b": 0.5}
