"""Checks of a prediction's input and output folders before nnU-Net's predictor sees them.

nnU-Net names input images ``CASE_XXXX<file_ending>``, one file per input channel ``XXXX`` of
``dataset.json``'s ``channel_names``. Its predictor assumes that and fails deep inside (an
``IndexError``) on a file without the suffix or a case with the wrong number of channels, raises
SimpleITK's or the OS's error on a corrupt image or an unwritable output folder, and predicts
without complaint from images with NaN voxels (garbage: an all-NaN volume gets thousands of
foreground voxels). :func:`prediction_cases` refuses all of these up front with a message that
names the file and what was expected.

NaN detection reads every image once. SimpleITK, nnU-Net's reader, returns NaN voxels of NIfTI
files as 0 (it treats the NaN ``scl_slope`` SimpleITK itself writes as "no scaling" and drops the
NaN voxels too, version 2.5), so NIfTI files are checked with nibabel, which keeps them.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from recokd.errors import UserError

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _read_array(path: Path) -> np.ndarray:
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asanyarray(nib.load(str(path)).dataobj)
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def check_image_file(path: Path) -> None:
    """Raise :class:`UserError` if ``path`` cannot be read as an image or holds NaN / infinite voxels."""
    try:
        array = _read_array(path)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same to the user
        raise UserError(f"cannot read the image {path} ({type(e).__name__}: {str(e).strip()[:200]}); "
                        "is it a complete, valid image file?") from None
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise UserError(
                f"{path}: {bad} of {array.size} voxels are NaN or infinite; the network would predict "
                "garbage from them. Replace them (e.g. with the background intensity) and predict again"
            )


def prediction_cases(in_dir: Path, file_ending: str, channel_names: dict, *, check_images: bool = True
                     ) -> list[str]:
    """The case ids of ``in_dir``, after checking nnU-Net's naming, the channel count and the images.

    ``channel_names``: ``dataset.json``'s ``{"0": "CT", ...}``. Raises :class:`UserError` naming the
    offending file when a file lacks the ``_XXXX`` channel suffix, a case has other channels than
    the model's, or (``check_images``) an image is unreadable or has NaN / infinite voxels.
    """
    if not in_dir.is_dir():
        raise UserError(f"input folder {in_dir} does not exist")
    names = sorted(p.name for p in in_dir.iterdir() if p.name.endswith(file_ending) and p.is_file())
    channels: dict[str, set[int]] = defaultdict(set)
    for name in names:
        m = _CHANNEL_SUFFIX.match(name[: -len(file_ending)])
        if m is None:
            raise UserError(
                f"{in_dir / name}: nnU-Net input files are named CASE_XXXX{file_ending}, XXXX the input "
                f"channel (0000 for {channel_names.get('0', 'the first channel')}); rename it, e.g. to "
                f"{name[: -len(file_ending)]}_0000{file_ending}"
            )
        channels[m["case"]].add(int(m["channel"]))
    if not channels:
        raise UserError(f"input folder {in_dir} has no images named CASE_XXXX{file_ending}")
    expected = set(range(len(channel_names)))
    ordered = sorted(channel_names.items(), key=lambda kv: int(kv[0]))
    described = ", ".join(f"{int(k):04d} ({v})" for k, v in ordered)
    for case, found in sorted(channels.items()):
        if found != expected:
            extra = sorted(found - expected)
            missing = sorted(expected - found)
            what = []
            if extra:
                what.append("unexpected " + ", ".join(f"{case}_{c:04d}{file_ending}" for c in extra))
            if missing:
                what.append("missing " + ", ".join(f"{case}_{c:04d}{file_ending}" for c in missing))
            raise UserError(
                f"{in_dir}: case {case} has {len(found)} channel file(s) but the model takes "
                f"{len(expected)} input channel(s): {described} ({'; '.join(what)})"
            )
    if check_images:
        for case in sorted(channels):
            for c in sorted(expected):
                check_image_file(in_dir / f"{case}_{c:04d}{file_ending}")
    return sorted(channels)


def check_output_folder_writable(out_dir: Path, flag: str = "-o") -> None:
    """Create ``out_dir`` if needed and check that files can be written there (clear error naming
    ``flag``, the option that chose the folder, if not)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".recokd_write_test_", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write into the output folder {out_dir} ({e.strerror or e}); choose a "
                        f"writable folder with {flag}") from None


def check_output_outside_input(in_dir: Path, out_dir: Path, flags: tuple[str, str] = ("-i", "-o")) -> None:
    """Refuse an output folder that is the input folder or inside it: predictions written next to the
    images would be read as images (or refused as misnamed ones) by the next run on that folder.
    Symlinks are resolved; neither folder needs to exist."""
    inside = Path(in_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    if out == inside or inside in out.parents:
        where = "is" if out == inside else "is inside"
        raise UserError(f"{flags[1]} {out_dir} {where} the input folder {flags[0]} {in_dir}: predictions "
                        "written there would be taken for input images by the next run; choose an output "
                        "folder outside the input folder")
