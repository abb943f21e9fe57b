"""Tests for the ``recokd phantoms`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from recokd.cli import main
from recokd.data.phantoms import LABELS


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    return tmp_path / "raw"


ARGS = ["phantoms", "--id", "901", "--cases", "3", "--test-cases", "1", "--seed", "2",
        "--shape", "16", "24", "20", "--spacing", "2", "1", "1.5"]


def test_phantoms_command_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(ARGS) == 0
    folder = tmp_path / "raw" / "Dataset901_Phantoms"
    out = capsys.readouterr().out
    assert str(folder) in out
    for name in LABELS:
        assert name in out
    assert "small" in out and "large" in out
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["numTraining"] == 3 and dj["reco_kd_phantoms"]["seed"] == 2
    assert len(list((folder / "imagesTr").iterdir())) == 3
    assert len(list((folder / "labelsTs").iterdir())) == 1
    img = sitk.ReadImage(str(folder / "imagesTr" / "Phantoms_000_0000.nii.gz"))
    assert img.GetSpacing() == pytest.approx((1.5, 1.0, 2.0))
    assert img.GetSize() == (20, 24, 16)
    # the printed mean voxel counts are those of the written training labels
    liver = sum((sitk.GetArrayFromImage(sitk.ReadImage(str(p))) == LABELS["liver"]).sum()
                for p in (folder / "labelsTr").iterdir()) / 3
    assert f"{liver:.1f}" in out


def test_existing_dataset_needs_overwrite(capsys: pytest.CaptureFixture) -> None:
    assert main(ARGS) == 0
    capsys.readouterr()
    assert main(ARGS) == 2
    err = capsys.readouterr().err
    assert "recokd phantoms: error:" in err and "--overwrite" in err
    assert main([*ARGS, "--overwrite"]) == 0


def test_bad_input_is_reported_without_traceback(capsys: pytest.CaptureFixture) -> None:
    assert main(["phantoms", "--id", "1000", "--cases", "3"]) == 2
    err = capsys.readouterr().err
    assert "dataset_id" in err and "Traceback" not in err


def test_raw_option_without_environment(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("nnUNet_raw")
    assert main(["phantoms", "--id", "5", "--cases", "2", "--shape", "16", "16", "16", "--name", "Tiny"]) == 2
    assert "nnUNet_raw" in capsys.readouterr().err
    raw = tmp_path / "elsewhere"
    assert main(["phantoms", "--id", "5", "--cases", "2", "--shape", "16", "16", "16", "--name", "Tiny",
                 "--raw", str(raw)]) == 0
    assert (raw / "Dataset005_Tiny" / "dataset.json").is_file()
    assert "nnUNet_raw=" in capsys.readouterr().out  # reminds the user where nnU-Net looks
