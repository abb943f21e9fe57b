"""The fault matrix for the nnU-Net configurations users really have (issue 31, items 2, 3, 4, 5, 8):
the 2d configuration in deployment (quantize, profile), the cascade (refused up front), an exported
model run through another dataset's preprocessing (refused), ignore-label datasets (evaluated as
nnU-Net does) and a 2d student trained after a 3d one (no --overwrite). Each case runs the ``recokd``
entry point as a user would and asserts the exit code, a one-line message naming the file or field,
no traceback, and checksums of what the user had (helpers of tests/test_faults.py).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.cli import main
from tests.deploy.test_onnx import TINY_DATASET_JSON, tiny_plans, write_results_folder
from tests.test_faults import DATASET, PREDICT, checksum, fails_cleanly, images, nnunet_env, write_seg

__all__ = ["images", "nnunet_env"]  # fixtures of tests/test_faults.py used here

STUDENT_2D = "nnUNetTrainer__nnUNetPlans_recokd_t2__2d"


def plans_2d(widths: list[int] = (8, 16, 32), patch: list[int] = (16, 16)) -> dict:
    """:func:`tiny_plans` plus a ``2d`` configuration (PlainConvUNet with 2D convolutions, as nnU-Net's
    planner writes it: in-plane patch and spacing, its own data identifier)."""
    plans = tiny_plans(list(widths), [16, 16, 16])
    config = copy.deepcopy(plans["configurations"]["3d_fullres"])
    n = len(widths)
    config["architecture"]["arch_kwargs"].update(
        features_per_stage=list(widths), conv_op="torch.nn.modules.conv.Conv2d", kernel_sizes=[[3, 3]] * n,
        strides=[[1, 1]] + [[2, 2]] * (n - 1), norm_op="torch.nn.modules.instancenorm.InstanceNorm2d")
    config.update(data_identifier="nnUNetPlans_2d", patch_size=list(patch), spacing=[1.0, 1.0],
                  median_image_size_in_voxels=[32.0, 32.0], batch_size=4)
    plans["configurations"]["2d"] = config
    return plans


def cascade_plans() -> dict:
    """:func:`tiny_plans` plus nnU-Net's ``3d_lowres`` and ``3d_cascade_fullres`` entries."""
    plans = tiny_plans([4, 8, 16], [16, 16, 16])
    configs = plans["configurations"]
    configs["3d_lowres"] = {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                            "spacing": [2.0, 2.0, 2.0], "next_stage": "3d_cascade_fullres"}
    configs["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    return plans


@pytest.fixture
def student_2d(nnunet_env) -> Path:
    """A 2d ReCo-KD-sized student (the 2d teacher's plans scaled by t=2) in $nnUNet_results."""
    from recokd.nnunet.plans import scale_plans

    student = scale_plans(plans_2d(), "2d", 2)
    return write_results_folder(nnunet_env["results"] / DATASET, student, folder_name=STUDENT_2D,
                                configuration="2d")


# ---------------------------------------------------------------------------- 2: 2d in deployment


def test_2d_student_is_quantized_and_predicts(nnunet_env, student_2d, images, tmp_path, capsys):
    """Before: ``ValueError: zip() argument 2 is shorter than argument 1`` (3D tile centring). Now: 2d
    tiles cut from single slices; the int8 model predicts through ``recokd predict --backend openvino``."""
    pytest.importorskip("nncf")
    from recokd.deploy.openvino_backend import read_model_folder
    from tests.deploy.test_openvino import write_preprocessed

    plans = json.loads((student_2d / "plans.json").read_text())
    write_preprocessed(nnunet_env["preprocessed"], plans, 4, validation=["case_03"], configuration="2d")
    out = tmp_path / "int8"
    before = checksum(student_2d, images)
    assert main(["quantize", str(student_2d), "-o", str(out), "--calibration-cases", "3",
                 "--tiles-per-case", "2"]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and "6 tile(s) from 3 case(s)" in printed.out
    sidecar, model, _ = read_model_folder(out)
    assert sidecar["configuration"] == "2d" and sidecar["patch_size"] == [16, 16]
    assert sidecar["preprocessing"]["spacing"] == [1.0, 1.0]
    assert "FakeQuantize" in {op.get_type_name() for op in model.get_ops()}
    pred = tmp_path / "pred"
    assert main(["predict", "-i", str(images), "-o", str(pred), "-d", "902", "-c", "2d", "-f", "0",
                 "-tr", "nnUNetTrainer", "-p", "nnUNetPlans_recokd_t2", "--device", "cpu", "-npp", "0",
                 "-nps", "0", "--backend", "openvino", "--openvino", str(out), "--threads", "1"]) == 0
    seg = sitk.ReadImage(str(pred / "case_a.nii.gz"))
    assert seg.GetSize() == sitk.ReadImage(str(images / "case_a_0000.nii.gz")).GetSize()
    assert checksum(student_2d, images) == before


def test_2d_calibration_tiles_are_single_slices():
    from recokd.deploy.quantize import case_tiles

    data = np.arange(2 * 5 * 12 * 14, dtype=np.float32).reshape(2, 5, 12, 14)
    seg = np.zeros((1, 5, 12, 14), dtype=np.int8)
    seg[0, 3, 6, 7] = 1  # one foreground voxel: the even tiles are centred on it, in slice 3
    tiles = case_tiles(data, seg, [8, 8], 4, np.random.default_rng(0))
    assert all(t.shape == (1, 2, 8, 8) for t in tiles)
    np.testing.assert_array_equal(tiles[0][0], data[:, 3, 2:10, 3:11])
    for t in tiles[1::2]:  # uniformly placed: some slice, in-plane window inside the volume
        assert any(np.array_equal(t[0], data[:, z, y:y + 8, x:x + 8])
                   for z in range(5) for y in range(5) for x in range(7))


def test_2d_student_is_profiled(nnunet_env, student_2d, tmp_path, capsys):
    """Before: nnU-Net's ``AssertionError: input_image must be a 4D`` (the synthetic volume was 2D).
    Now: a 2d patch slides over every slice of a 3D volume, 4 mirrored passes per tile."""
    out = tmp_path / "profile"
    before = checksum(student_2d)
    assert main(["profile", str(student_2d), "--threads", "1", "--repeats", "1", "--warmup", "0",
                 "--no-isolate", "--volume-shape", "3", "20", "24", "--backends", "torch-onednn,onnxruntime",
                 "-o", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    rows = json.loads((out / "profile.json").read_text())["models"]
    assert [r["backend"] for r in rows] == ["torch-onednn", "onnxruntime"]
    for row in rows:
        assert row["configuration"] == "2d" and row["volume_shape"] == [3, 20, 24]
        assert row["n_tiles"] == 3 * 2 * 2  # every slice: 2 x 2 tiles of 16^2 at step 0.5
        assert row["mirror_axes"] == [0, 1] and row["timings"]["on"]["passes_per_tile"] == 4
    assert checksum(student_2d) == before


def test_default_profile_volume_of_a_2d_model():
    from recokd.errors import UserError
    from recokd.evaluation.profile import DEFAULT_2D_SLICES, volume_shape_for

    assert volume_shape_for([16, 12], None) == (DEFAULT_2D_SLICES, 32, 24)
    assert volume_shape_for([16, 12], (20, 30)) == (1, 20, 30)
    assert volume_shape_for([16, 12, 8], None) == (32, 24, 16)
    with pytest.raises(UserError, match="needs a 3D volume"):
        volume_shape_for([16, 12, 8], (20, 30))


# ---------------------------------------------------------------------------- 3: the cascade


@pytest.fixture
def cascade(nnunet_env) -> Path:
    """A cascade model (3d_cascade_fullres) of dataset 902 in $nnUNet_results, and its plans in
    $nnUNet_preprocessed (a cascade teacher, as nnU-Net's training leaves it)."""
    pre = nnunet_env["preprocessed"] / DATASET
    pre.mkdir()
    (pre / "nnUNetPlans.json").write_text(json.dumps(cascade_plans(), indent=4))
    (pre / "dataset.json").write_text(json.dumps(TINY_DATASET_JSON, indent=4))
    return write_results_folder(nnunet_env["results"] / DATASET, cascade_plans(),
                                folder_name="nnUNetTrainer__nnUNetPlans__3d_cascade_fullres")


def test_train_refuses_the_cascade(nnunet_env, cascade, capsys):
    """Before: a blosc2 ``FileNotFoundError`` for ``.../predicted_next_stage/...`` after the student
    plans were written. Now: one line, before anything is written."""
    fails_cleanly(["train", "902", "3d_cascade_fullres", "0", "--teacher", str(cascade), "--device", "cpu"],
                  capsys, ["3d_cascade_fullres", "nnUNetPlans.json", "3d_lowres", "cascade"],
                  [nnunet_env["preprocessed"], nnunet_env["results"]])


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_predict_refuses_the_cascade(nnunet_env, cascade, images, tmp_path, capsys, backend):
    """Before: a torch channel-mismatch ``RuntimeError``. Now: one line naming the model's plans.json."""
    args = ["predict", "-i", str(images), "-o", str(tmp_path / "p"), *PREDICT, "--backend", backend]
    args[args.index("3d_fullres")] = "3d_cascade_fullres"
    fails_cleanly(args, capsys, ["3d_cascade_fullres", str(cascade / "plans.json"), "nnUNetv2_predict"],
                  [images, nnunet_env["results"], tmp_path / "p"])


def test_predict_onnx_refuses_the_cascade(nnunet_env, images, tmp_path, capsys):
    """Before: nnU-Net's ``AssertionError`` about ``folder_with_segs_from_prev``. Now: one line naming
    the ONNX file. The model is the 3d_fullres export with the sidecar a cascade export carries
    (configuration 3d_cascade_fullres, plans with its previous stage)."""
    from recokd.deploy.onnx_export import export_onnx, sidecar_path_for

    onnx = tmp_path / "m" / "cascade.onnx"
    onnx.parent.mkdir()
    export_onnx(nnunet_env["model"], onnx)
    sidecar_file = sidecar_path_for(onnx)
    sidecar = json.loads(sidecar_file.read_text())
    sidecar.update(configuration="3d_cascade_fullres", plans=cascade_plans())
    sidecar.pop("preprocessing")
    sidecar_file.write_text(json.dumps(sidecar))
    fails_cleanly(["predict-onnx", "-i", str(images), "-o", str(tmp_path / "p"), "--onnx", str(onnx),
                   "--sequential"], capsys, [str(onnx), "3d_cascade_fullres"],
                  [images, onnx.parent, tmp_path / "p"])


# ---------------------------------------------------------------------------- 4: another dataset's model


OTHER = "Dataset903_RecoKDOther"


@pytest.fixture
def other_dataset(nnunet_env) -> Path:
    """Dataset 903 in $nnUNet_results: same plans name, channels and classes as 902, but CT
    normalisation at 0.7 x 0.7 x 3 mm."""
    plans = tiny_plans([4, 8, 16], [16, 16, 16])
    plans["dataset_name"] = OTHER
    config = plans["configurations"]["3d_fullres"]
    config.update(spacing=[3.0, 0.7, 0.7], normalization_schemes=["CTNormalization"])
    return write_results_folder(nnunet_env["results"] / OTHER, plans)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_model_of_another_dataset_is_refused(nnunet_env, other_dataset, images, tmp_path, capsys,
                                                      backend):
    """Before: exit 0 (only the plans name and channel/class counts were compared). Now: one line
    naming both datasets and what differs."""
    if backend == "openvino":
        pytest.importorskip("openvino")
        from recokd.deploy.openvino_backend import export_openvino

        exported = tmp_path / "ov"
        export_openvino(nnunet_env["model"], exported)
        flags = ["--openvino", str(exported)]
    else:
        from recokd.deploy.onnx_export import export_onnx

        exported = tmp_path / "m" / "902.onnx"
        exported.parent.mkdir()
        export_onnx(nnunet_env["model"], exported)
        flags = ["--onnx", str(exported)]
    args = ["predict", "-i", str(images), "-o", str(tmp_path / "p"), *PREDICT, "--backend", backend, *flags]
    args[args.index("902")] = "903"
    fails_cleanly(args, capsys, [DATASET, OTHER, str(exported), "spacing [1.0, 1.0, 1.0] vs [3.0, 0.7, 0.7]"],
                  [images, exported.parent, nnunet_env["results"], tmp_path / "p"])


def test_old_sidecar_is_checked_on_the_plans_it_carries(nnunet_env, other_dataset, tmp_path):
    """A sidecar written before the fingerprint: the fingerprint of its own plans is compared."""
    from recokd.deploy.model import check_same_preprocessing, preprocessing_fingerprint
    from recokd.deploy.onnx_export import export_onnx, sidecar_path_for
    from recokd.errors import UserError

    onnx = tmp_path / "old.onnx"
    export_onnx(nnunet_env["model"], onnx)
    sidecar = json.loads(sidecar_path_for(onnx).read_text())
    fingerprint = sidecar.pop("preprocessing")
    assert fingerprint == preprocessing_fingerprint(sidecar["plans"], sidecar["dataset_json"], "3d_fullres")
    assert fingerprint["dataset_name"] == DATASET
    assert fingerprint["normalization_schemes"] == ["ZScoreNormalization"]
    own = nnunet_env["model"]
    check_same_preprocessing(sidecar, onnx, json.loads((own / "plans.json").read_text()),
                             json.loads((own / "dataset.json").read_text()), own)
    with pytest.raises(UserError, match=f"{DATASET} but .* is dataset {OTHER}.*CTNormalization"):
        check_same_preprocessing(sidecar, onnx, json.loads((other_dataset / "plans.json").read_text()),
                                 json.loads((other_dataset / "dataset.json").read_text()), other_dataset)


# ---------------------------------------------------------------------------- 5: ignore label


def test_evaluate_masks_the_ignore_label_as_nnunet(tmp_path, capsys):
    """Before: ``datasets with an 'ignore' label are not supported``. Now: ignore voxels of the
    reference count for no class in both masks; Dice equals nnU-Net's ``compute_metrics``."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    gt, pred = np.zeros((12, 14, 16), np.uint8), np.zeros((12, 14, 16), np.uint8)
    gt[2:7, 2:7, 2:7] = 1
    gt[8:11, 8:12, 8:12] = 2
    gt[:, :, 13:] = 3  # unannotated slab
    pred[2:7, 2:7, 2:7] = 1
    pred[:, 10:, 12:] = 1  # a false positive, mostly inside the unannotated slab
    pred[8:11, 8:12, 8:14] = 2  # class 2 spills into the slab
    write_seg(tmp_path / "gt", "c1.nii.gz", gt)
    write_seg(tmp_path / "pred", "c1.nii.gz", pred)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3},
                                        "file_ending": ".nii.gz"}))
    watched = [tmp_path / "gt", tmp_path / "pred"]
    before = checksum(*watched)
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset-json",
                 str(dataset_json), "-o", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert checksum(*watched) == before
    summary = json.loads((out / "summary.json").read_text())
    nnunet = compute_metrics(str(tmp_path / "gt" / "c1.nii.gz"), str(tmp_path / "pred" / "c1.nii.gz"),
                             SimpleITKIO(), [1, 2], ignore_label=3)["metrics"]
    unmasked = {v: 2 * ((gt == v) & (pred == v)).sum() / ((gt == v).sum() + (pred == v).sum())
                for v in (1, 2)}
    for name, value in (("a", 1), ("b", 2)):
        dice = summary["per_class"][name]["dice"]["mean"]
        assert dice == pytest.approx(nnunet[value]["Dice"], abs=1e-12)
        assert dice > unmasked[value] + 0.05  # the ignore voxels would have changed it
    assert summary["ignore_label"] == 3 and summary["labels"] == {"a": 1, "b": 2}
    assert summary["cases"][0]["ignored_voxels"] == int((gt == 3).sum())
    assert summary["warnings"] == []  # the ignore value is not an unknown label


# ---------------------------------------------------------------------------- 8: 2d after 3d


@pytest.fixture(scope="module")
def tiny_2d(tmp_path_factory):
    """The really planned tiny dataset of tests/nnunet/_tiny.py in a private $nnUNet_preprocessed,
    with its 2d configuration preprocessed too, and a 2d teacher of its plans in $nnUNet_results."""
    from tests.nnunet._tiny import TINY_ID, TINY_NAME, tiny_nnunet_dirs

    shared = tiny_nnunet_dirs(tmp_path_factory)
    root = tmp_path_factory.mktemp("faults_2d")
    dirs = {"raw": shared["raw"], "preprocessed": root / "preprocessed", "results": root / "results"}
    shutil.copytree(shared["preprocessed"] / TINY_NAME, dirs["preprocessed"] / TINY_NAME,
                    ignore=shutil.ignore_patterns("nnUNetPlans_3d_fullres"))
    with pytest.MonkeyPatch.context() as mp:
        for key, folder in dirs.items():
            mp.setenv(f"nnUNet_{key}", str(folder))
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess

        preprocess([TINY_ID], "nnUNetPlans", configurations=("2d",), num_processes=(1,), verbose=False,
                   show_progress_bar=False)
    folder = dirs["preprocessed"] / TINY_NAME
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dirs["teacher_2d"] = write_results_folder(dirs["results"] / TINY_NAME, plans, dataset_json,
                                              "nnUNetTrainer__nnUNetPlans__2d", configuration="2d")
    return dirs


@pytest.fixture
def tiny_env(tiny_2d, monkeypatch):
    from tests.nnunet._tiny import TINY_NAME

    for key in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{key}", str(tiny_2d[key]))
    student = tiny_2d["preprocessed"] / TINY_NAME / "nnUNetPlans_recokd_t2.json"
    student.unlink(missing_ok=True)
    yield tiny_2d
    student.unlink(missing_ok=True)
    shutil.rmtree(tiny_2d["results"] / TINY_NAME / "nnUNetTrainerReCoKD__nnUNetPlans_recokd_t2__2d",
                  ignore_errors=True)


def _3d_student_plans() -> tuple[Path, dict]:
    from recokd.nnunet.plans import make_student_plans
    from tests.nnunet._tiny import TINY_ID

    sp = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2)
    return sp.path, json.loads(sp.path.read_text())


def test_train_2d_refuses_a_real_plans_conflict(tiny_env, capsys):
    """A student plans file whose 2d entry was scaled otherwise (another c_min) is still refused."""
    from recokd.nnunet.plans import make_student_plans
    from tests.nnunet._tiny import TINY_ID

    path, _ = _3d_student_plans()
    other = make_student_plans(TINY_ID, "nnUNetPlans", "2d", 2, c_min=16, new_identifier="other",
                               dry_run=True)
    both = json.loads(path.read_text())
    both["configurations"]["2d"]["architecture"] = other.plans["configurations"]["2d"]["architecture"]
    path.write_text(json.dumps(both, indent=4))
    fails_cleanly(["train", "901", "2d", "0", "--teacher", str(tiny_env["teacher_2d"]), "--device", "cpu"],
                  capsys, [str(path), "--overwrite"], [tiny_env["preprocessed"], tiny_env["results"]])


@pytest.mark.slow
def test_train_2d_after_3d_needs_no_overwrite(tiny_env, capsys, monkeypatch):
    """Before: ``nnUNetPlans_recokd_t2.json already exists with different content; pass --overwrite``.
    Now: the 2d architecture is merged into the 3d student's plans file and one epoch trains; the 3d
    student's entries are unchanged."""
    from recokd.nnunet.plans import architecture_source

    path, plans_3d = _3d_student_plans()
    teacher = tiny_env["teacher_2d"]
    before = checksum(teacher, tiny_env["preprocessed"] / "Dataset901_RecoKDTiny" / "nnUNetPlans_2d")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "false")
    assert main(["train", "901", "2d", "all", "--teacher", str(teacher), "--device", "cpu", "--epochs", "1",
                 "--iters-per-epoch", "1", "--val-iters", "1"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    merged = json.loads(path.read_text())
    source = architecture_source(plans_3d, "3d_fullres")
    assert merged["configurations"][source] == plans_3d["configurations"][source]
    widths_2d = merged["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"]
    assert widths_2d != plans_3d["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"]
    fold = tiny_env["results"] / "Dataset901_RecoKDTiny" / "nnUNetTrainerReCoKD__nnUNetPlans_recokd_t2__2d"
    assert (fold / "fold_all" / "checkpoint_final.pth").is_file()
    assert checksum(teacher, tiny_env["preprocessed"] / "Dataset901_RecoKDTiny" / "nnUNetPlans_2d") == before
