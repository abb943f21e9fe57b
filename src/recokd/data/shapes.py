"""Geometric building blocks for the CT phantoms: smooth random fields and deformed shapes.

Conventions shared with :mod:`recokd.data.phantoms`:

- arrays are indexed ``(z, y, x)`` (numpy order);
- positions and radii are given in *field-of-view-relative* units: along every axis the volume
  spans ``[-1, 1]`` (voxel centres at ``(i + 0.5) / n * 2 - 1``), so the same anatomy fits any
  grid shape;
- a shape is described by an implicit function ``f`` that is negative inside, about ``-1`` at the
  centre, ``0`` on the surface and ``+inf`` far outside. ``-f`` is a cheap "depth" that the
  phantom uses for layered tissues (cortex/medulla, fat/muscle wall) and to pick interior points.

Everything is vectorised (separable bases, bounding boxes); nothing loops over voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: implicit-function value used outside a shape's bounding box
OUTSIDE = np.float32(np.inf)


def axis_coords(n: int) -> np.ndarray:
    """Field-of-view-relative coordinates of the ``n`` voxel centres along one axis, in ``(-1, 1)``."""
    return ((np.arange(n, dtype=np.float64) + 0.5) / n * 2.0 - 1.0).astype(np.float32)


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation matrix (3 x 3, acting on ``(z, y, x)`` vectors) from three angles in radians.

    The angles rotate about the z, y and x axes, applied in that order.
    """
    az, ay, ax = (float(a) for a in angles)
    cz, sz = np.cos(az), np.sin(az)
    cy, sy = np.cos(ay), np.sin(ay)
    cx, sx = np.cos(ax), np.sin(ax)
    # vectors are (z, y, x); "about z" mixes y and x, etc.
    rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return (rx @ ry @ rz).astype(np.float32)


def _rbf_basis(coords: np.ndarray, lo: float, hi: float, n_knots: int) -> np.ndarray:
    """Gaussian radial basis (``len(coords) x n_knots``), rows scaled to unit L2 norm."""
    knots = np.linspace(lo, hi, n_knots, dtype=np.float32)
    width = (hi - lo) / max(n_knots - 1, 1)
    b = np.exp(-0.5 * ((coords[:, None] - knots[None, :]) / width) ** 2)
    return (b / np.linalg.norm(b, axis=1, keepdims=True)).astype(np.float32)


def smooth_field(
    rng: np.random.Generator,
    coords: Sequence[np.ndarray],
    *,
    n_knots: int = 5,
    bounds: Sequence[tuple[float, float]] | None = None,
) -> np.ndarray:
    """A smooth random field with unit variance at every point, sampled on a ``(z, y, x)`` grid.

    ``coords`` are the three 1-D coordinate vectors of the grid. The field is a tensor-product
    expansion of ``n_knots**3`` i.i.d. standard-normal coefficients on Gaussian bases whose knots
    span ``bounds`` (per axis; default: the extent of ``coords``), so its correlation length is
    about ``extent / (n_knots - 1)``. Cost is three small matrix products.
    """
    if bounds is None:
        bounds = [(float(c[0]), float(c[-1])) for c in coords]
    coef = rng.standard_normal((n_knots, n_knots, n_knots), dtype=np.float32)
    bz, by, bx = (_rbf_basis(c, lo, hi, n_knots) for c, (lo, hi) in zip(coords, bounds, strict=True))
    f = np.tensordot(bz, coef, axes=(1, 0))  # nz x k x k
    f = np.tensordot(f, by, axes=(1, 1))  # nz x k x ny
    f = np.tensordot(f, bx, axes=(1, 1))  # nz x ny x nx
    return f.astype(np.float32, copy=False)


def _bbox(coords: np.ndarray, lo: float, hi: float) -> slice:
    """Index slice of the sorted 1-D ``coords`` lying in ``[lo, hi]`` (possibly empty)."""
    start = int(np.searchsorted(coords, lo, side="left"))
    stop = int(np.searchsorted(coords, hi, side="right"))
    return slice(start, max(start, stop))


def deformed_ellipsoid(
    rng: np.random.Generator,
    coords: Sequence[np.ndarray],
    center: Sequence[float],
    radii: Sequence[float],
    *,
    angles: Sequence[float] = (0.0, 0.0, 0.0),
    deform: float = 0.15,
    n_knots: int = 4,
) -> np.ndarray:
    """Implicit function of a rotated ellipsoid whose surface is warped by a smooth random field.

    ``f = |R (p - center) / radii| - 1 + deform * field``, with the field's mean over the
    undeformed ellipsoid removed so that the volume stays close to the ellipsoid's. Only a
    bounding box around the ellipsoid is evaluated; elsewhere ``f`` is ``+inf``. Returns a
    ``float32`` array of the grid's shape. ``deform`` of ``0.1``-``0.25`` gives organ-like
    irregular but blob-shaped surfaces.
    """
    shape = tuple(len(c) for c in coords)
    out = np.full(shape, OUTSIDE, dtype=np.float32)
    reach = float(max(radii)) * (1.0 + 2.5 * deform) + 1e-3
    boxes = [_bbox(c, m - reach, m + reach) for c, m in zip(coords, center, strict=True)]
    sub = [c[b] for c, b in zip(coords, boxes, strict=True)]
    if any(len(s) == 0 for s in sub):
        return out
    rot = rotation_matrix(angles)
    d = [s - np.float32(m) for s, m in zip(sub, center, strict=True)]
    dz, dy, dx = d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]
    r2 = np.zeros(tuple(len(s) for s in sub), dtype=np.float32)
    for i in range(3):  # three rotated axes, each a broadcast sum over the box
        q = rot[i, 0] * dz + rot[i, 1] * dy + rot[i, 2] * dx
        r2 += (q / np.float32(radii[i])) ** 2
    f = np.sqrt(r2) - 1.0
    if deform > 0:
        bounds = [(m - reach, m + reach) for m in center]
        field = smooth_field(rng, sub, n_knots=n_knots, bounds=bounds)
        inside = f < 0
        if inside.any():  # zero mean over the body: warps the surface without shrinking/growing it
            field -= field[inside].mean()
        f += np.float32(deform) * field
    out[tuple(boxes)] = f
    return out


def tube(
    coords: Sequence[np.ndarray],
    z_range: tuple[float, float],
    path_y: np.ndarray,
    path_x: np.ndarray,
    radius_yx: tuple[float, float],
) -> np.ndarray:
    """Boolean mask of a tube running along z with an in-plane elliptic cross-section.

    ``path_y``/``path_x`` give the tube centre for every z voxel (length ``nz``, FOV-relative);
    ``radius_yx`` are the in-plane semi-axes (FOV-relative). Slices outside ``z_range`` are empty.
    """
    cz, cy, cx = coords
    inside_z = (cz >= z_range[0]) & (cz <= z_range[1])
    dy = (cy[None, :, None] - path_y[:, None, None]) / np.float32(radius_yx[0])
    dx = (cx[None, None, :] - path_x[:, None, None]) / np.float32(radius_yx[1])
    return (dy**2 + dx**2 <= 1.0) & inside_z[:, None, None]
