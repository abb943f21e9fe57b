"""evaluate_folders on tiny NIfTI folders, its result files, and the evaluate / show commands."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.cli import main
from recokd.errors import UserError
from recokd.evaluation.evaluate import evaluate_folders
from tests.evaluation.test_metrics import reference_box_nsd

SPACING = (2.5, 1.0, 1.0)   # z, y, x
SHAPE = (8, 12, 12)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write(array: np.ndarray, path: Path, spacing: tuple[float, float, float] = SPACING) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def reference() -> np.ndarray:
    gt = np.zeros(SHAPE, dtype=np.uint8)
    gt[2:6, 2:6, 2:6] = 1        # "organ": a 4x4x4 cube
    gt[2:4, 8:10, 8:10] = 2      # "dot": a 2x2x2 cube
    return gt


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """GT in raw/Dataset900_T/labelsTs (dataset.json one level up, as nnU-Net lays it out), preds apart."""
    ds = tmp_path / "raw" / "Dataset900_T"
    gt_dir, pred_dir = ds / "labelsTs", tmp_path / "pred"
    (ds / "dataset.json").parent.mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "organ": 1, "dot": 2}, "file_ending": ".nii.gz",
        "channel_names": {"0": "CT"},
        "reco_kd_phantoms": {"classes": {"organ": {"label": 1, "size": "large"},
                                         "dot": {"label": 2, "size": "small"}}},
    }))
    gt = reference()
    shifted = np.zeros_like(gt)
    shifted[3:7, 2:6, 2:6] = 1   # organ moved one slice (2.5 mm) along z
    shifted[gt == 2] = 2
    no_dot = gt.copy()
    no_dot[no_dot == 2] = 0      # dot missed: exactly one mask empty
    for i, pred in enumerate((gt, shifted, no_dot)):
        write(gt, gt_dir / f"T_{i:03d}.nii.gz")
        write(pred, pred_dir / f"T_{i:03d}.nii.gz")
        write(gt.astype(np.float32) * 50 - 20, ds / "imagesTs" / f"T_{i:03d}_0000.nii.gz")
    (pred_dir / "plans.json").write_text("{}")   # nnU-Net leaves other files next to predictions
    return pred_dir, gt_dir


def strict_json(path: Path) -> dict:
    def no_constants(name: str) -> None:
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


def test_evaluate_folders_scores_every_case_and_class(folders: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = folders
    res = evaluate_folders(pred_dir, gt_dir, nsd_tolerance_mm={"organ": 1.0, "dot": 2.0})
    assert res.cases == ["T_000", "T_001", "T_002"]
    assert res.labels == {"organ": 1, "dot": 2}
    assert res.labels_source.startswith("dataset.json") and res.reader == "SimpleITKIO"
    assert res.case_geometry["T_000"] == {"shape": list(SHAPE), "spacing_mm": list(SPACING)}
    organ = res.per_case["T_001"]["organ"]
    assert organ.dice == pytest.approx(0.75) and organ.hd95_mm == pytest.approx(2.5)  # shift in mm
    # surface-area NSD of the 4^3 cube moved one 2.5 mm slice, 1 mm tolerance (see test_metrics.py)
    moved, cube = ((3, 2, 2), (4, 4, 4)), ((2, 2, 2), (4, 4, 4))
    assert organ.nsd == pytest.approx(reference_box_nsd(moved, cube, SPACING, 1.0), abs=1e-6)
    dot = res.per_case["T_002"]["dot"]
    assert (dot.dice, dot.nsd, dot.empty, dot.nsd_tolerance_mm) == (0.0, 0.0, "pred", 2.0)
    assert math.isnan(dot.hd95_mm)

    s = res.summary()
    assert s["per_class"]["organ"]["dice"] == {"mean": pytest.approx(2.75 / 3),
                                               "sd": pytest.approx(np.std([1, 0.75, 1], ddof=1)),
                                               "n": 3, "nan": 0}
    assert s["per_class"]["dot"]["hd95_mm"] == {"mean": 0.0, "sd": 0.0, "n": 2, "nan": 1}
    assert s["per_class"]["dot"]["empty_cases"] == {"both": 0, "gt": 0, "pred": 1}
    fg = s["foreground_mean"]
    assert fg["dice"] == pytest.approx((2.75 / 3 + 2 / 3) / 2)
    assert fg["hd95_mm"] == pytest.approx((2.5 / 3 + 0.0) / 2)
    assert s["groups"]["small"]["classes"] == ["dot"] and s["groups"]["small"]["dice"] == pytest.approx(2 / 3)
    assert s["nsd_tolerance_mm"] == {"organ": 1.0, "dot": 2.0}


def test_result_files_state_the_conventions(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred_dir, gt_dir = folders
    out = tmp_path / "out"
    evaluate_folders(pred_dir, gt_dir, out_dir=out, hd95_one_empty_mm=None)
    s = strict_json(out / "summary.json")
    assert s["empty_mask_convention"]["name"] == "recokd-empty-v1/hd95-nan"
    assert "exactly one of them empty" in s["empty_mask_convention"]["text"]
    assert s["nsd_tolerance_mm"] == {"organ": 1.0, "dot": 1.0}
    assert s["per_class"]["dot"]["hd95_mm"]["nan"] == 1 and s["num_cases"] == 3
    assert s["cases"][0]["spacing_mm"] == list(SPACING)
    with (out / "per_case.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["empty_convention"] for r in rows} == {"recokd-empty-v1/hd95-nan"}
    row = next(r for r in rows if r["case"] == "T_002" and r["class"] == "dot")
    got = (row["dice"], row["hd95_mm"], row["nsd"], row["empty"], row["label"])
    assert got == ("0", "nan", "0", "pred", "2")
    row = next(r for r in rows if r["case"] == "T_001" and r["class"] == "organ")
    assert float(row["hd95_mm"]) == 2.5 and float(row["dice"]) == 0.75 and row["gt_voxels"] == "64"


def test_stated_maximum_replaces_nan(folders: tuple[Path, Path]) -> None:
    res = evaluate_folders(*folders, hd95_one_empty_mm=40.0)
    s = res.summary()
    assert s["per_class"]["dot"]["hd95_mm"]["mean"] == pytest.approx(40.0 / 3)
    assert s["empty_mask_convention"]["name"] == "recokd-empty-v1/hd95-max-40mm"


def test_existing_results_are_not_overwritten(folders: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = evaluate_folders(*folders, out_dir=out)
    before = (out / "per_case.csv").read_bytes()
    (out / "summary.json").write_text("mine")
    with pytest.raises(UserError, match="overwrite"):
        evaluate_folders(*folders, out_dir=out)
    with pytest.raises(UserError, match="summary.json"):
        res.write(out)
    assert (out / "summary.json").read_text() == "mine"
    res.write(out, overwrite=True)
    assert strict_json(out / "summary.json")["num_cases"] == 3
    assert (out / "per_case.csv").read_bytes() == before


def test_unmatched_files_are_listed(folders: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = folders
    (pred_dir / "T_001.nii.gz").rename(pred_dir / "T_101.nii.gz")
    with pytest.raises(UserError) as e:
        evaluate_folders(pred_dir, gt_dir)
    msg = str(e.value)
    assert "missing in pred_dir" in msg and "T_001.nii.gz" in msg
    assert "not in gt_dir" in msg and "T_101.nii.gz" in msg


def test_geometry_mismatch_names_the_file(folders: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = folders
    write(reference(), pred_dir / "T_001.nii.gz", spacing=(3.0, 1.0, 1.0))
    with pytest.raises(UserError, match=r"case T_001: prediction .*T_001.nii.gz has spacing 3 x 1 x 1 mm"):
        evaluate_folders(pred_dir, gt_dir)
    write(reference()[:, :, :10], pred_dir / "T_001.nii.gz")
    with pytest.raises(UserError, match=r"case T_001: prediction .*T_001.nii.gz has shape \(8, 12, 10\)"):
        evaluate_folders(pred_dir, gt_dir)


def test_a_prediction_misplaced_in_world_space_is_refused(folders: tuple[Path, Path]) -> None:
    """Same grid, other origin or direction: the voxels would be scored against the wrong anatomy."""
    pred_dir, gt_dir = folders
    image = sitk.GetImageFromArray(reference())
    image.SetSpacing(tuple(reversed(SPACING)))
    image.SetOrigin((0.0, 0.0, 5.0))
    sitk.WriteImage(image, str(pred_dir / "T_001.nii.gz"))
    with pytest.raises(UserError, match=r"case T_001: prediction .*T_001.nii.gz has origin \(mm\) "
                                        r"\[0, 0, 5\] but ground truth .* has \[0, 0, 0\]"):
        evaluate_folders(pred_dir, gt_dir)
    image.SetOrigin((0.0, 0.0, 0.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(pred_dir / "T_001.nii.gz"))
    with pytest.raises(UserError, match=r"has direction cosines \[-1, "):
        evaluate_folders(pred_dir, gt_dir)


def test_labels_without_dataset_json(tmp_path: Path) -> None:
    gt = reference()
    write(gt, tmp_path / "gt" / "a.nii.gz")
    pred = gt.copy()
    pred[0, 0, 0] = 3
    write(pred, tmp_path / "pred" / "a.nii.gz")
    res = evaluate_folders(tmp_path / "pred", tmp_path / "gt")        # every value found in the files
    assert res.labels == {"1": 1, "2": 2, "3": 3} and res.labels_source == "values found in the files"
    assert res.per_case["a"]["3"].empty == "gt" and res.class_groups == {}
    res = evaluate_folders(tmp_path / "pred", tmp_path / "gt", labels={"organ": 1}, nsd_tolerance_mm=0.0,
                           class_groups={"big": ["organ"]})
    assert list(res.labels) == ["organ"] and res.summary()["groups"]["big"]["dice"] == 1.0
    assert res.warnings == ["case a: prediction has label value(s) [2, 3] not in the labels; not scored",
                            "case a: ground truth has label value(s) [2] not in the labels; not scored"]
    with pytest.raises(UserError, match="class_groups"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", labels={"organ": 1}, class_groups={"x": ["y"]})


def test_evaluate_command(folders: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    pred_dir, gt_dir = folders
    args = ["evaluate", str(pred_dir), str(gt_dir), "--plot", "--nsd-tol", "1", "dot=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "organ" in out and "dot" in out and "foreground mean" in out and "small (1 classes)" in out
    assert "0.917±0.144" in out                                   # organ Dice mean±sd
    assert "recokd-empty-v1/hd95-nan" in out
    result_dir = pred_dir / "recokd_eval"
    assert strict_json(result_dir / "summary.json")["nsd_tolerance_mm"] == {"organ": 1.0, "dot": 2.0}
    png = (result_dir / "dice_boxplot.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "recokd evaluate: error:" in err and "--overwrite" in err and "Traceback" not in err
    assert main([*args, "--overwrite", "--labels", "organ=1"]) == 2           # no class "dot" any more
    assert "unknown class name(s) ['dot']" in capsys.readouterr().err
    assert main([*args[:4], "--overwrite", "--labels", "organ=1", "--hd95-empty-max", "30"]) == 0
    summary = strict_json(result_dir / "summary.json")
    assert list(summary["labels"]) == ["organ"]
    assert summary["empty_mask_convention"]["name"] == "recokd-empty-v1/hd95-max-30mm"
    assert main(["evaluate", str(pred_dir), str(gt_dir), "-o", str(pred_dir / "x"), "--nsd-tol", "a=b"]) == 2
    assert "--nsd-tol" in capsys.readouterr().err


def test_show_command(folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred_dir, gt_dir = folders
    image = gt_dir.parent / "imagesTs" / "T_001_0000.nii.gz"
    out = tmp_path / "show.png"
    args = ["show", str(image), str(gt_dir / "T_001.nii.gz"), str(pred_dir / "T_001.nii.gz"), "-o", str(out),
            "--dataset-json", str(gt_dir.parent / "dataset.json")]
    assert main(args) == 0
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--slice", "99"]) == 2
    assert "slice" in capsys.readouterr().err
