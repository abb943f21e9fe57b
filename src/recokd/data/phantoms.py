"""Write synthetic CT phantom datasets in nnU-Net v2 raw format.

:func:`write_phantom_dataset` creates ``<raw_dir>/Dataset{id:03d}_{name}/`` with

- ``imagesTr/{name}_{i:03d}_0000.nii.gz`` and ``labelsTr/{name}_{i:03d}.nii.gz`` (training cases
  ``i = 0 .. num_cases-1``),
- optionally ``imagesTs/`` and ``labelsTs/`` (held-out cases ``i = num_cases ..``). nnU-Net never
  reads ``labelsTs``: it is kept aside so that predictions on ``imagesTs`` can be scored later,
- ``dataset.json`` (``channel_names`` ``{"0": "CT"}``, ``labels``, ``numTraining``,
  ``file_ending``) plus a ``reco_kd_phantoms`` entry recording the generator settings and the
  mean voxel count per class (nnU-Net ignores keys it does not know).

Case ``i`` of seed ``s`` is ``generate_case(case_rng(s, i), shape, spacing, ...)``, so a dataset is
reproducible from its ``dataset.json``. Arrays are ``(z, y, x)``; ``shape`` and ``spacing`` are
given in that order and reversed to SimpleITK's ``(x, y, z)`` when writing, so nnU-Net (which
reads the spacing from the image header) sees exactly ``spacing``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recokd.data.anatomy import (
    HU_RANGE,
    LABELS,
    PHANTOM_CLASSES,
    PhantomClass,
    generate_case,
    validate_geometry,
    validate_imaging,
    validate_small_scale,
)
from recokd.data.raw_dataset import check_dataset_destination, move_into_place, temporary_sibling
from recokd.errors import UserError

__all__ = [
    "FILE_ENDING",
    "GENERATOR_VERSION",
    "HU_RANGE",
    "LABELS",
    "PHANTOM_CLASSES",
    "PhantomClass",
    "case_rng",
    "generate_case",
    "prepare_dataset_folder",
    "resolve_raw_dir",
    "write_dataset_atomically",
    "write_phantom_dataset",
]

FILE_ENDING = ".nii.gz"
#: bumped whenever the same seed would produce different images
GENERATOR_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of case ``index`` of a dataset drawn with ``seed`` (independent streams)."""
    return np.random.default_rng([int(seed), int(index)])


def resolve_raw_dir(raw_dir: str | Path | None) -> Path:
    """``raw_dir`` or, when ``None``, the ``nnUNet_raw`` environment variable, as a ``Path``."""
    if raw_dir is None or str(raw_dir) == "":
        env = os.environ.get("nnUNet_raw", "")
        if not env:
            raise UserError(
                "raw_dir: no directory given and the nnUNet_raw environment variable is not set; "
                "pass raw_dir (--raw DIR) or export nnUNet_raw=/path/to/nnUNet_raw"
            )
        raw_dir = env
    path = Path(raw_dir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"raw_dir: {path} exists but is not a directory")
    return path


def _check_int(field: str, value: object, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]`` or a UserError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{field}: expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise UserError(f"{field}: expected an integer {allowed}, got {value}")
    return int(value)


def _write_volume(array: np.ndarray, spacing_zyx: Sequence[float], path: Path) -> None:
    """Write a ``(z, y, x)`` array with SimpleITK, spacing converted to ITK's ``(x, y, z)``."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    image.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_phantom_dataset(
    dataset_id: int,
    *,
    num_cases: int = 40,
    num_test_cases: int = 0,
    seed: int = 0,
    shape: tuple[int, int, int] = (64, 64, 64),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    name: str = "Phantoms",
    raw_dir: str | Path | None = None,
    overwrite: bool = False,
    noise_hu: float = 20.0,
    psf_mm: float = 0.6,
    small_scale: float = 1.0,
    progress: bool = False,
) -> Path:
    """Generate a phantom dataset and write it as ``<raw_dir>/Dataset{dataset_id:03d}_{name}/``.

    ``shape`` and ``spacing`` (mm) are in array order ``(z, y, x)``: ``spacing=(2.5, 1, 1)`` means
    2.5 mm slices. ``small_scale`` enlarges the small structures
    (:func:`~recokd.data.anatomy.generate_case`). ``raw_dir`` defaults to ``$nnUNet_raw`` and is
    created if missing. The dataset is written to a hidden temporary folder next to its
    destination and moved into place only when complete.

    Refuses (``UserError``) when ``raw_dir`` already holds a folder ``Dataset{dataset_id:03d}_*``:
    a folder of the same name is replaced only with ``overwrite=True`` (nothing else is deleted);
    a folder with the same id but another name is never touched, and since nnU-Net resolves
    datasets by id, the id must then be changed. Warns when ``nnUNet_preprocessed`` or
    ``nnUNet_results`` already hold this id (re-run ``nnUNetv2_plan_and_preprocess``).

    Returns the dataset folder.
    """
    dataset_id = _check_int("dataset_id", dataset_id, 1, 999)
    num_cases = _check_int("num_cases", num_cases, 2)
    num_test_cases = _check_int("num_test_cases", num_test_cases, 0)
    seed = _check_int("seed", seed, 0)
    shp, spc = validate_geometry(shape, spacing)
    validate_imaging(noise_hu, psf_mm)
    validate_small_scale(small_scale)
    raw, target = prepare_dataset_folder(raw_dir, dataset_id, name, overwrite)
    settings = (name, num_cases, num_test_cases, seed, shp, spc, noise_hu, psf_mm, float(small_scale))

    def write(tmp: Path) -> None:
        counts = _write_cases(tmp, *settings, progress)
        _write_dataset_json(tmp, *settings, counts)

    write_dataset_atomically(raw, target, write)
    return target


def prepare_dataset_folder(
    raw_dir: str | Path | None, dataset_id: int, name: str, overwrite: bool
) -> tuple[Path, Path]:
    """Check that ``Dataset{dataset_id:03d}_{name}`` may be written into ``raw_dir``.

    Returns ``(raw, target)``: the raw folder and the dataset folder in it.

    ``raw_dir`` defaults to ``$nnUNet_raw``. Refuses (``UserError``) a bad ``name``, a folder with the
    same id and another name (nnU-Net resolves datasets by id; it is never touched), and an existing
    ``target`` without ``overwrite``. Warns when ``nnUNet_preprocessed`` or ``nnUNet_results`` already
    hold this id. Nothing is written or deleted.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(
            f"name: expected letters, digits, '_' or '-' (starting with a letter or digit), got {name!r}"
        )
    raw = resolve_raw_dir(raw_dir)
    return raw, check_dataset_destination(raw, dataset_id, name, overwrite)


def write_dataset_atomically(raw: Path, target: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a hidden temporary folder next to ``target``, then move it to ``target``
    (:mod:`recokd.data.raw_dataset`).

    An existing ``target`` (allowed by :func:`prepare_dataset_folder`) is replaced only once ``write``
    has finished; on any failure the temporary folder is removed and ``target`` is left as it was.
    """
    tmp = temporary_sibling(target)
    try:
        write(tmp)
        move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_cases(
    folder: Path,
    name: str,
    num_cases: int,
    num_test_cases: int,
    seed: int,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    noise_hu: float,
    psf_mm: float,
    small_scale: float,
    progress: bool,
) -> np.ndarray:
    """Generate and write all cases; returns the per-class voxel counts of the training cases."""
    subdirs = {key: folder / key for key in ("imagesTr", "labelsTr")}
    if num_test_cases:
        subdirs.update({key: folder / key for key in ("imagesTs", "labelsTs")})
    for d in subdirs.values():
        d.mkdir()
    counts = np.zeros((num_cases, len(LABELS)), dtype=np.int64)
    indices = range(num_cases + num_test_cases)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="phantoms", unit="case")
    for i in indices:
        image, label = generate_case(
            case_rng(seed, i), shape, spacing, noise_hu=noise_hu, psf_mm=psf_mm, small_scale=small_scale
        )
        split = "Tr" if i < num_cases else "Ts"
        case = f"{name}_{i:03d}"
        _write_volume(image, spacing, subdirs[f"images{split}"] / f"{case}_0000{FILE_ENDING}")
        _write_volume(label, spacing, subdirs[f"labels{split}"] / f"{case}{FILE_ENDING}")
        if i < num_cases:
            counts[i] = np.bincount(label.ravel(), minlength=len(LABELS))
    return counts


def _write_dataset_json(
    folder: Path,
    name: str,
    num_cases: int,
    num_test_cases: int,
    seed: int,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    noise_hu: float,
    psf_mm: float,
    small_scale: float,
    counts: np.ndarray,
) -> None:
    """Write nnU-Net's ``dataset.json`` with the generator settings under ``reco_kd_phantoms``."""
    mean_counts = counts.mean(axis=0)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "shape_zyx": list(shape),
        "spacing_zyx_mm": list(spacing),
        "noise_hu": float(noise_hu),
        "psf_mm": float(psf_mm),
        "small_scale": float(small_scale),
        "case_ids_train": [0, num_cases - 1],
        "case_ids_test": [num_cases, num_cases + num_test_cases - 1] if num_test_cases else None,
        "test_labels": "labelsTs/ (not read by nnU-Net; for evaluating predictions on imagesTs)"
        if num_test_cases else None,
        "classes": {
            c.name: {"label": c.label, "size": c.size, "description": c.description} for c in PHANTOM_CLASSES
        },
        "mean_voxels_per_case": {k: round(float(mean_counts[v]), 1) for k, v in LABELS.items()},
    }
    dataset = {
        "name": name,
        "description": "Synthetic CT-like abdominal phantoms generated by reco-kd (no patient data).",
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": num_cases,
        "numTest": num_test_cases,
        "file_ending": FILE_ENDING,
        "reco_kd_phantoms": meta,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
