"""Prediction input checks (recokd.nnunet.inputs): nnU-Net naming, channels, unreadable and NaN images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.errors import UserError
from recokd.nnunet.inputs import check_output_folder_writable, prediction_cases

CT = {"0": "CT"}


def _write(path: Path, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _folder(tmp_path: Path, names: list[str], ending: str = ".nii.gz") -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for n in names:
        _write(d / f"{n}{ending}", np.zeros((4, 5, 6), np.float32))
    return d


def test_cases_of_a_well_formed_folder(tmp_path: Path) -> None:
    d = _folder(tmp_path, ["b_0000", "a_0000", "a_0001", "b_0001"])
    (d / "notes.txt").write_text("ignored: another file ending")
    assert prediction_cases(d, ".nii.gz", {"0": "T1", "1": "T2"}) == ["a", "b"]


def test_a_file_without_the_channel_suffix_is_named(tmp_path: Path) -> None:
    d = _folder(tmp_path, ["a_0000", "case7"])
    with pytest.raises(UserError, match=r"case7\.nii\.gz: nnU-Net input files are named CASE_XXXX\.nii\.gz.*"
                                        r"case7_0000\.nii\.gz"):
        prediction_cases(d, ".nii.gz", CT)


def test_a_case_with_the_wrong_number_of_channels_is_named(tmp_path: Path) -> None:
    d = _folder(tmp_path, ["a_0000", "a_0001"])
    with pytest.raises(UserError, match=r"case a has 2 channel file\(s\) but the model takes 1 input "
                                        r"channel\(s\): 0000 \(CT\) \(unexpected a_0001\.nii\.gz\)"):
        prediction_cases(d, ".nii.gz", CT)
    with pytest.raises(UserError, match=r"missing a_0002\.nii\.gz"):
        prediction_cases(d, ".nii.gz", {"0": "T1", "1": "T2", "2": "FLAIR"})


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        prediction_cases(tmp_path / "nope", ".nii.gz", CT)
    with pytest.raises(UserError, match="has no images named CASE_XXXX.mha"):
        prediction_cases(_folder(tmp_path, ["a_0000"]), ".mha", CT)


def test_a_corrupt_image_is_named(tmp_path: Path) -> None:
    d = _folder(tmp_path, ["a_0000"])
    (d / "b_0000.nii.gz").write_bytes(b"\x1f\x8b garbage, not a NIfTI file")
    with pytest.raises(UserError, match=r"cannot read the image .*b_0000\.nii\.gz"):
        prediction_cases(d, ".nii.gz", CT)
    assert prediction_cases(d, ".nii.gz", CT, check_images=False) == ["a", "b"]


@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_nan_voxels_are_refused_naming_the_file(tmp_path: Path, ending: str) -> None:
    d = _folder(tmp_path, ["a_0000"], ending)
    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    a[0, 0, 0] = np.nan
    _write(d / f"b_0000{ending}", a)
    name = f"b_0000{ending}".replace(".", "[.]")
    with pytest.raises(UserError, match=rf"{name}: 2 of 120 voxels are NaN or infinite"):
        prediction_cases(d, ending, CT)


def test_output_folder_must_be_writable(tmp_path: Path) -> None:
    out = tmp_path / "out" / "deeper"
    check_output_folder_writable(out)
    assert out.is_dir() and not list(out.iterdir())  # the probe file is gone
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"cannot write into the output folder .*a_file/sub"):
        check_output_folder_writable(blocker / "sub")
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(UserError, match="cannot write into the output folder"):
                check_output_folder_writable(ro)
        finally:
            ro.chmod(0o700)
