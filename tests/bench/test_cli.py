"""``recokd bench`` refusals before any training: methods, dataset state, test folders, teacher, and a
resumed bench with other settings (no nnU-Net run needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recokd.bench.cli import build_selection, build_study
from recokd.bench.config import check_or_write_config
from recokd.bench.runner import check_teacher_folder, check_teacher_labels, first_case_files
from recokd.cli import build_parser, main
from recokd.errors import UserError

TINY = [
    "--phantoms",
    "--phantom-cases",
    "6",
    "--phantom-test-cases",
    "2",
    "--epochs",
    "1",
    "--iters-per-epoch",
    "2",
    "--device",
    "cpu",
    "--no-progress",
]


def _err(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_unknown_method_lists_the_registered_ones(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _err(capsys, ["bench", *TINY, "-o", str(tmp_path / "b"), "--methods", "reco,fitnett"])
    assert "unknown method(s) fitnett" in err and "reco-affinity" in err and "cirkd" in err
    assert not (tmp_path / "b").exists()


def test_option_combinations(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["-o", str(tmp_path / "b")]
    assert "expected an nnU-Net results folder" in _err(capsys, ["bench", *TINY, *out, "--teacher", "/x"])
    assert "apply to --dataset" in _err(
        capsys, ["bench", *TINY, *out, "--test-images", "/x", "--test-labels", "/y"]
    )
    assert "-t: width exponents must be >= 1" in _err(capsys, ["bench", *TINY, *out, "-t", "0,2"])
    assert "--phantom-cases must be >= 5" in _err(capsys, ["bench", *TINY, *out, "--phantom-cases", "3"])
    assert "--phantom-cases apply to --phantoms only" in _err(
        capsys, ["bench", "--dataset", "4", "--phantom-cases", "6", *out]
    )
    lw = ["--kd-option", "level_weights=[0,1,1]"]
    err = _err(capsys, ["bench", *TINY, *out, "--methods", "reco,dist", *lw])
    assert "KD method 'dist' of --methods entry 'dist' has no option 'level_weights'" in err
    with pytest.raises(SystemExit):
        main(["bench", *TINY, *out, "--kd-option", "tau"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("mine")
    assert "--report-dir" in _err(capsys, ["bench", *TINY, *out, "--report-dir", str(tmp_path / "a_file")])
    assert (tmp_path / "a_file").read_text() == "mine"
    assert not (tmp_path / "b").exists()


def test_dataset_needs_nnunet_folders_and_preprocessing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = ["-o", str(tmp_path / "b"), "--device", "cpu"]
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert "nnUNet_raw is not set" in _err(capsys, ["bench", "--dataset", "5", *out])

    raw, pre = tmp_path / "raw", tmp_path / "pre"
    (raw / "Dataset005_Tiny").mkdir(parents=True)
    pre.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    err = _err(capsys, ["bench", "--dataset", "5", *out])
    assert "not planned" in err and "nnUNetv2_plan_and_preprocess -d 5 -c 3d_fullres" in err

    folder = pre / "Dataset005_Tiny"
    folder.mkdir()
    plans = {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    err = _err(capsys, ["bench", "--dataset", "Dataset005_Tiny", "-c", "2d", *out])
    assert "no configuration '2d'" in err and "nnUNetv2_plan_and_preprocess -d 5 -c 2d" in err
    err = _err(capsys, ["bench", "--dataset", "5", *out])
    assert "no preprocessed data" in err and "nnUNetv2_plan_and_preprocess -d 5 -c 3d_fullres" in err

    (folder / "nnUNetPlans_3d_fullres").mkdir()
    (folder / "nnUNetPlans_3d_fullres" / "case.b2nd").write_text("x")
    err = _err(capsys, ["bench", "--dataset", "5", *out])
    assert f"test images: {raw / 'Dataset005_Tiny' / 'imagesTs'} does not exist" in err
    assert "--test-images DIR --test-labels DIR" in err
    (tmp_path / "imgs").mkdir()
    err = _err(
        capsys,
        [
            "bench",
            "--dataset",
            "5",
            *out,
            "--test-images",
            str(tmp_path / "imgs"),
            "--test-labels",
            str(tmp_path / "labs"),
        ],
    )
    assert f"test images: {tmp_path / 'imgs'} is empty" in err
    assert not (tmp_path / "b").exists()  # nothing written before the inputs are checked


def test_resumed_bench_with_another_schedule_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "b"
    args = build_parser().parse_args(["bench", *TINY, "-o", str(out), "--methods", "reco"])
    check_or_write_config(out, build_study(args), build_selection(args))
    saved = (out / "bench_config.json").read_text()
    err = _err(
        capsys,
        [
            "bench",
            *TINY,
            "-o",
            str(out),
            "--methods",
            "reco",
            "--iters-per-epoch",
            "3",
            "--teacher-epochs",
            "2",
        ],
    )
    assert "holds a bench with other settings" in err and "iters_per_epoch: saved 2, now 3" in err
    assert "teacher_epochs: saved 5, now 2" in err and "--overwrite" in err
    assert (out / "bench_config.json").read_text() == saved

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    assert "not a bench folder" in _err(capsys, ["bench", *TINY, "-o", str(tmp_path / "mine")])


def test_teacher_folder_checks(tmp_path: Path) -> None:
    model = tmp_path / "Dataset005_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    with pytest.raises(UserError, match="dataset.json, fold_0/checkpoint_final.pth missing"):
        check_teacher_folder(str(model), "3d_fullres", "0")
    (model / "dataset.json").write_text("{}")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    assert check_teacher_folder(str(model / "fold_0"), "3d_fullres", "0") == model
    with pytest.raises(UserError, match="trained for configuration '3d_fullres'"):
        check_teacher_folder(str(model), "2d", "0")
    with pytest.raises(UserError, match="expected an nnU-Net results folder"):
        check_teacher_folder(str(tmp_path), "3d_fullres", "0")


def test_a_phantom_bench_refuses_a_teacher_of_other_classes(tmp_path: Path) -> None:
    def dataset_json(folder: Path, labels: dict[str, int]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))
        return folder / "dataset.json"

    phantoms = {"background": 0, "liver": 1, "lesion": 2}
    generated = dataset_json(tmp_path / "raw", phantoms)
    teacher = tmp_path / "teacher"
    dataset_json(teacher, phantoms)
    check_teacher_labels(teacher, generated)  # same classes: accepted
    dataset_json(teacher, {"background": 0, "liver": 1})
    with pytest.raises(UserError, match="trained for the labels .*, the generated phantoms have .*lesion"):
        check_teacher_labels(teacher, generated)
    (teacher / "dataset.json").unlink()
    with pytest.raises(UserError, match="cannot read the labels of"):
        check_teacher_labels(teacher, generated)


def test_first_case_files_for_the_latency_profile(tmp_path: Path) -> None:
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"file_ending": ".nii.gz", "channel_names": {"0": "T1", "1": "T2"}}))
    images = tmp_path / "imagesTs"
    images.mkdir()
    assert first_case_files(images, dj) is None
    for name in ("b_001_0000", "b_001_0001", "a_002_0000", "a_002_0001"):
        (images / f"{name}.nii.gz").write_bytes(b"")
    assert first_case_files(images, dj) == [
        str(images / "a_002_0000.nii.gz"),
        str(images / "a_002_0001.nii.gz"),
    ]
    assert first_case_files(images, None) is None
