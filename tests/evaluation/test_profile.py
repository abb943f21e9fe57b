"""Efficiency profile (recokd.evaluation.profile, recokd profile) of a tiny teacher and its t=2 student."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from recokd.cli import main
from recokd.errors import UserError
from recokd.evaluation.profile import FLOPS_UNIT, ModelSpec, ProfileSettings, count_flops, profile_models
from recokd.evaluation.profile_report import format_table, read_mean_dice
from recokd.nnunet.plans import scale_plans
from tests.deploy.test_onnx import tiny_plans, write_results_folder

TEACHER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
STUDENT = "nnUNetTrainer__nnUNetPlans_recokd_t2__3d_fullres"


def _network(plans: dict):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from recokd.nnunet.plans import build_network

    pm = PlansManager(plans)
    return build_network(pm, pm.get_configuration("3d_fullres"), {"channel_names": {"0": "MRI"},
                         "labels": {"background": 0, "a": 1, "b": 2}}, deep_supervision=False,
                         allow_init=False).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("profile_results")
    plans = tiny_plans([8, 16, 32], [16, 16, 16])
    teacher = write_results_folder(root, plans, folder_name=TEACHER)
    student = write_results_folder(root, scale_plans(plans, "3d_fullres", 2), folder_name=STUDENT)
    return teacher, student


def test_flop_counter_unit_is_two_per_multiply_add():
    conv = torch.nn.Conv3d(3, 5, 3, padding=1, bias=True)
    voxels = 6 * 7 * 8
    assert count_flops(conv, (1, 3, 6, 7, 8)) == 2 * 3 * 5 * 27 * voxels  # bias not counted


def test_student_flops_and_parameters_are_about_a_sixteenth():
    """nnU-Net's default 3d_fullres widths (all above c_min after /4): FLOPs and parameters of the t=2
    student are ~1/16 of the teacher's (between 1/20 and 1/10)."""
    plans = tiny_plans([32, 64, 128, 256, 320], [32, 16, 16])
    teacher, student = _network(plans), _network(scale_plans(plans, "3d_fullres", 2))
    ft, fs = count_flops(teacher, (1, 1, 32, 16, 16)), count_flops(student, (1, 1, 32, 16, 16))
    pt = sum(p.numel() for p in teacher.parameters())
    ps = sum(p.numel() for p in student.parameters())
    assert 1 / 20 < fs / ft < 1 / 10
    assert 1 / 20 < ps / pt < 1 / 10


def test_profile_in_process(models):
    teacher, student = models
    settings = ProfileSettings(threads=1, repeats=2, warmup=0, isolate=False, volume_shape=(24, 16, 16))
    report = profile_models([ModelSpec.parse(str(teacher)), ModelSpec.parse(f"small={student}")], settings)
    t, s = report.models
    assert (t.label, s.label) == (TEACHER, "small")
    # parameters: exactly the sum of numel of the network nnU-Net builds from the plans
    assert t.parameters == sum(p.numel() for p in _network(tiny_plans([8, 16, 32], [16] * 3)).parameters())
    assert t.widths == [8, 16, 32] and s.widths == [4, 4, 8]
    assert s.parameters < t.parameters and s.flops_per_patch < t.flops_per_patch
    assert t.flops_per_patch == count_flops(_network(tiny_plans([8, 16, 32], [16] * 3)), (1, 1, 16, 16, 16))
    assert t.volume_shape == s.volume_shape == [24, 16, 16] and t.volume_source.startswith("synthetic")
    assert t.n_tiles == 2  # 16^3 tiles at step 0.5 (8 voxels): 2 x 1 x 1
    for m in (t, s):
        assert set(m.timings) == {"off", "on"} and m.threads == 1 and m.mirror_axes == [0, 1, 2]
        assert m.timings["off"].passes_per_tile == 1 and m.timings["on"].passes_per_tile == 8
        for timing in m.timings.values():
            assert len(timing.times_s) == 2 and timing.median_s > 0 and timing.peak_memory_bytes >= 0
    r = report.ratios(s)
    assert r["parameters_ratio"] == s.parameters / t.parameters
    assert r["speedup_mirroring_off"] == t.timings["off"].median_s / s.timings["off"].median_s
    assert report.ratios(t)["flops_ratio"] == 1.0
    table = format_table(report)
    assert FLOPS_UNIT in table and "FlopCounterMode" in table and "tile step 0.5" in table
    assert "threads: 1" in table and "small" in table


def test_profile_isolated_default_volume(models):
    """Each model in a fresh process; without a volume shape the first model's default volume (twice
    its patch) is used for every model; peak memory is measured (RSS high-water mark)."""
    teacher, student = models
    settings = ProfileSettings(threads=1, repeats=1, warmup=0, mirroring=("off",))
    report = profile_models([ModelSpec.parse(str(teacher))], settings)
    (t,) = report.models
    assert t.volume_shape == [32, 32, 32] and report.settings.volume_shape == (32, 32, 32)
    assert t.n_tiles == 27  # 3 steps per axis at step 0.5
    assert t.memory_method.startswith("cpu RSS high-water mark") and t.timings["off"].peak_memory_bytes > 0
    assert t.parameters == sum(p.numel() for p in _network(tiny_plans([8, 16, 32], [16] * 3)).parameters())


def test_profile_cli_with_case_and_eval_json(models, tmp_path, capsys):
    """The command: a real nnU-Net case, JSON + CSV + Dice chart."""
    from tests.deploy.test_onnx import write_case

    teacher, student = models
    write_case(tmp_path / "case", "c", (20, 18, 16), seed=5)
    (tmp_path / "t.json").write_text(json.dumps({"foreground_mean": {"dice": 0.82}}))  # recokd evaluate
    (tmp_path / "s.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.78}}))  # nnU-Net
    out = tmp_path / "out"
    args = ["profile", f"teacher={teacher}", f"student={student}", "--threads", "1", "--repeats", "1",
            "--warmup", "0", "--case", str(tmp_path / "case" / "c_0000.nii.gz"), "--no-mirroring",
            "--no-isolate",
            "--eval-json", f"teacher={tmp_path / 't.json'}", "--eval-json", f"student={tmp_path / 's.json'}",
            "-o", str(out)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert "time mirror off" in stdout and "time mirror on" not in stdout and "0.8200" in stdout
    # the case's per-stage split: every stage timed, for each model, the network its sliding window
    assert "per-stage split of the case, seconds (nnunet resampling" in stdout
    after = stdout.split("per-stage split of the case")[1].splitlines()[2:4]
    split = [line.split() for line in after]
    assert [row[:3] for row in split] == [["teacher", "torch-onednn", "off"],
                                          ["student", "torch-onednn", "off"]]
    for row in split:
        read, pre, network, export, total = map(float, row[3:8])
        assert min(read, pre, network, export) > 0 and total == pytest.approx(read + pre + network + export,
                                                                              abs=0.002)
    data = json.loads((out / "profile.json").read_text())
    assert data["conventions"]["flops_unit"] == FLOPS_UNIT
    assert data["conventions"]["peak_memory"].startswith("cpu ")
    assert [m["label"] for m in data["models"]] == ["teacher", "student"]
    assert [m["dice"] for m in data["models"]] == [0.82, 0.78]
    assert data["models"][0]["volume_shape"] == [20, 18, 16] and data["models"][0]["n_tiles"] == 4
    assert set(data["models"][0]["stages"]) == {"read", "preprocess", "export"}
    assert all(st["seconds"] > 0 for st in data["models"][1]["stages"].values())
    assert data["models"][1]["parameters_ratio"] < 1 and data["settings"]["mirroring"] == ["off"]
    rows = list(csv.DictReader((out / "profile.csv").open()))
    assert [r["label"] for r in rows] == ["teacher", "student"]
    assert rows[1]["time_mirroring_on_median_s"] == ""  # not measured
    assert int(rows[0]["parameters"]) == data["models"][0]["parameters"]
    # paths relative to the report's folder, resolving from there to the files given (issue 31 item 10)
    case = tmp_path / "case" / "c_0000.nii.gz"
    assert data["settings"]["case_files"] == ["../case/c_0000.nii.gz"]
    assert data["models"][0]["volume_source"] == "case: ../case/c_0000.nii.gz"
    for m, row, model in zip(data["models"], rows, (teacher, student), strict=True):
        assert not Path(m["path"]).is_absolute() and (out / m["path"]).resolve() == Path(model).resolve()
        assert (out / m["checkpoint"]).is_file() and row["path"] == m["path"]
    assert (out / data["settings"]["case_files"][0]).resolve() == case.resolve()
    assert (out / "dice_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert main(args) == 2  # outputs exist
    assert "pass --overwrite" in capsys.readouterr().err


def test_bad_input(models, tmp_path, capsys):
    teacher, _ = models
    (tmp_path / "x.json").write_text(json.dumps({"accuracy": 1}))
    with pytest.raises(UserError, match="has no mean Dice .* top-level keys: accuracy"):
        read_mean_dice(tmp_path / "x.json")
    with pytest.raises(UserError, match="step size must be in"):
        profile_models([ModelSpec.parse(str(teacher))], ProfileSettings(step_size=0))
    with pytest.raises(UserError, match="--resampling applies to a real scan's stages: give --case"):
        ProfileSettings(resampling="torch").validate()
    with pytest.raises(UserError, match="resampling must be one of nnunet, torch"):
        ProfileSettings(resampling="cubic").validate()
    with pytest.raises(UserError, match="labels must be unique"):
        profile_models([ModelSpec.parse(f"a={teacher}"), ModelSpec.parse(f"a={teacher}")], ProfileSettings())
    assert main(["profile", str(teacher), "--eval-json", f"nope={tmp_path / 'x.json'}"]) == 2
    assert "is not a model label; labels: " + TEACHER in capsys.readouterr().err


def test_profile_backends_side_by_side(models, monkeypatch):
    """Every backend times the same sliding window: one row per (model, backend), achieved GFLOP/s
    from the row's own numbers, same-backend speed-ups, the machine's matmul rate, and a one-line
    note for a backend whose package is missing (here: onnxruntime, hidden)."""
    import importlib.util

    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from recokd.deploy.backends import BACKENDS

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    teacher, student = models
    settings = ProfileSettings(threads=1, repeats=1, warmup=0, isolate=False, volume_shape=(24, 16, 16),
                               mirroring=("off",), backends=BACKENDS)
    report = profile_models([ModelSpec.parse(f"teacher={teacher}"), ModelSpec.parse(f"student={student}")],
                            settings)
    ran = [b for b in BACKENDS if b != "onnxruntime"]
    assert [(m.label, m.backend) for m in report.models] == [("teacher", b) for b in ran] + [
        ("student", b) for b in ran]
    assert set(report.skipped) == {"onnxruntime"}
    assert "onnxruntime not installed" in report.skipped["onnxruntime"]
    assert report.matmul_gflops > 0
    rows = {(m.label, m.backend): m for m in report.models}
    for m in report.models:
        t = m.timings["off"]
        assert m.gflops_per_s("off") == pytest.approx(m.flops_per_patch * m.n_tiles / t.median_s / 1e9)
        assert m.parameters == rows[(m.label, "torch")].parameters  # counted on the same network
    s_ov = rows[("student", "openvino")]
    r = report.ratios(s_ov)
    assert r["speedup_same_backend_mirroring_off"] == (rows[("teacher", "openvino")].timings["off"].median_s
                                                       / s_ov.timings["off"].median_s)
    assert r["speedup_mirroring_off"] == rows[("teacher", "torch")].timings["off"].median_s / \
        s_ov.timings["off"].median_s
    assert rows[("student", "openvino-int8")].calibration.startswith("synthetic")
    table = format_table(report)
    assert "note: onnxruntime skipped" in table and "GFLOP/s" in table and "matmul" in table
    assert "openvino-int8 calibrated on synthetic" in table


def test_profile_refuses_bad_backends_and_missing_models(models, tmp_path, capsys):
    teacher, _ = models
    assert main(["profile", str(teacher), "--backends", "torch,tensorrt"]) == 2
    assert "backends must be 'all' or a comma-separated list" in capsys.readouterr().err
    assert main(["profile", str(teacher), "--device", "cuda", "--backends", "openvino"]) == 2
    assert "run on the CPU only" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "a"), str(teacher), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a'}, {tmp_path / 'b'}" in err  # every missing path in one message
