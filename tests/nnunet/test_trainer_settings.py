"""Fast tests of the ReCo-KD trainer plumbing: settings, trainer lookup by nnU-Net, DDP gradient
sync of the KD parameters, short-schedule trainer, CLI argument errors (no dataset needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from recokd.cli import main
from recokd.errors import UserError
from recokd.nnunet import EXT_TRAINER_ENV, add_ext_trainer_dir_to_env, ext_trainer_dir
from recokd.nnunet.settings import (
    SETTINGS_ENV,
    SETTINGS_FILE,
    KDSettings,
    read_settings,
    resolve_settings,
    write_settings,
)

# ---------------------------------------------------------------------------- settings


def test_settings_round_trip(tmp_path: Path) -> None:
    s = KDSettings(teacher="/x/T__P__3d_fullres", teacher_fold="all", method="reco-sard",
                   method_options={"alpha": 0.5}, kd_weight=0.02, schedule="cosine", warmup=0.3,
                   ema_decay=0.99, epochs=7, iters_per_epoch=3, val_iters=1, save_every=2, t=3, c_min=8)
    path = write_settings(s, tmp_path / "sub" / "s.json")
    assert read_settings(path) == s
    assert json.loads(path.read_text())["method_options"] == {"alpha": 0.5}
    assert not list(path.parent.glob(".*tmp"))  # atomic write leaves no temporary file


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("kd_weight", -1, "number >= 0"),
        ("schedule", "step", "one of constant, linear, cosine"),
        ("warmup", 1.5, "fraction in [0, 1]"),
        ("ema_decay", 1.0, "(0, 1)"),
        ("epochs", 0, "positive integer"),
        ("val_iters", 0, "positive integer"),
        ("teacher_fold", -1, "non-negative integer or 'all'"),
        ("method_options", [1], "option name -> value"),
        ("version", 99, "settings format 1"),
        ("optimizer", "rmsprop", "one of sgd, adam"),
        ("pseudo_label_loss", "yes", "true or false"),
        ("pseudo_label_loss", True, "false without unlabelled scans"),
    ],
)
def test_settings_reject_bad_values_naming_file_and_field(tmp_path: Path, field: str, value,
                                                          expected: str) -> None:
    data = KDSettings(teacher="/t").to_dict()
    data[field] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as e:
        read_settings(path)
    assert str(path) in str(e.value) and f"'{field}'" in str(e.value) and expected in str(e.value)


def test_pseudo_label_loss_comes_with_unlabelled_scans_and_defaults_off(tmp_path: Path) -> None:
    given = KDSettings(teacher="/t", unlabelled="/scans", pseudo_label_loss=True)
    path = write_settings(given, tmp_path / "s.json")
    assert read_settings(path).pseudo_label_loss
    path.write_text(json.dumps({"teacher": "/t"}))  # settings written before the field existed
    assert read_settings(path).pseudo_label_loss is False


def test_settings_reject_unknown_and_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"teacher": "/t", "kd_wieght": 0.1}))
    with pytest.raises(UserError, match="unknown field.*kd_wieght"):
        read_settings(path)
    path.write_text(json.dumps({"epochs": 3}))
    with pytest.raises(UserError, match="'teacher'.*missing"):
        read_settings(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="could not be read as JSON"):
        read_settings(path)


def test_resolve_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fold = tmp_path / "fold_0"
    local = write_settings(KDSettings(teacher="/local", epochs=5), fold / SETTINGS_FILE)
    env_file = write_settings(KDSettings(teacher="/env", epochs=9), tmp_path / "env.json")
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    assert resolve_settings(fold, continue_training=False) == (None, None)  # e.g. --val: no teacher needed
    s, src = resolve_settings(fold, continue_training=True)
    assert (s.teacher, src) == ("/local", local)
    monkeypatch.setenv(SETTINGS_ENV, str(env_file))
    s, src = resolve_settings(fold, continue_training=False)  # fresh start: the file recokd train points at
    assert (s.teacher, src) == ("/env", env_file)
    s, src = resolve_settings(fold, continue_training=True)  # --c: the settings the run was started with
    assert (s.teacher, src) == ("/local", local)
    s, src = resolve_settings(tmp_path / "other_fold", continue_training=True)
    assert (s.teacher, src) == ("/env", env_file)
    assert resolve_settings(None, continue_training=False)[0].teacher == "/env"  # nnUNet_results unset


# ---------------------------------------------------------------------------- nnU-Net finds the trainers


def test_ext_trainer_env_is_prepended_once() -> None:
    env = {EXT_TRAINER_ENV: os.pathsep.join(["/users/own_trainers", ""])}
    value = add_ext_trainer_dir_to_env(env)
    assert value.split(os.pathsep) == [ext_trainer_dir(), "/users/own_trainers"]
    assert add_ext_trainer_dir_to_env(env) == value
    assert add_ext_trainer_dir_to_env({}) == ext_trainer_dir()


def test_nnunet_finds_trainers_through_ext_trainer_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """nnU-Net's own lookup (used by nnUNetv2_train/predict and its DDP workers) finds our classes
    by name, importing the ext folder's modules standalone, and gets the very same class objects."""
    import sys

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from recokd.nnunet.short_trainer import nnUNetTrainerShort, nnUNetTrainerShortNoDA
    from recokd.nnunet.trainer import nnUNetTrainerReCoKD, nnUNetTrainerReCoKDNoDA

    folder = Path(ext_trainer_dir())
    assert sorted(p.name for p in folder.glob("*.py")) == [
        "__init__.py", "nnUNetTrainerReCoKD.py", "nnUNetTrainerReCoKDNoDA.py", "nnUNetTrainerShort.py",
        "nnUNetTrainerShortNoDA.py"]
    monkeypatch.setenv(EXT_TRAINER_ENV, str(folder))
    assert recursive_find_trainer_class_by_name("nnUNetTrainerReCoKD") is nnUNetTrainerReCoKD
    assert recursive_find_trainer_class_by_name("nnUNetTrainerShort") is nnUNetTrainerShort
    assert recursive_find_trainer_class_by_name("nnUNetTrainerReCoKDNoDA") is nnUNetTrainerReCoKDNoDA
    assert recursive_find_trainer_class_by_name("nnUNetTrainerShortNoDA") is nnUNetTrainerShortNoDA
    assert "nnUNetTrainerReCoKD" not in sys.modules  # nnU-Net cleans up its by-file imports
    monkeypatch.delenv(EXT_TRAINER_ENV)
    with pytest.raises(RuntimeError, match="nnUNet_extTrainer"):
        recursive_find_trainer_class_by_name("nnUNetTrainerReCoKD")


def test_optimizers_are_nnunets_sgd_and_adamw() -> None:
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    from recokd.nnunet.optim import build_optimizer, check_optimizer_name

    params = [torch.nn.Parameter(torch.ones(3))]
    sgd, sched = build_optimizer("sgd", params, 1e-2, 3e-5, 10)
    assert isinstance(sgd, torch.optim.SGD) and isinstance(sched, PolyLRScheduler)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (1e-2, 0.99, True, 3e-5)
    adam, _ = build_optimizer("adam", params, 1e-2, 3e-5, 10)
    g = adam.param_groups[0]
    assert isinstance(adam, torch.optim.AdamW) and g["amsgrad"]
    assert (g["lr"], g["weight_decay"]) == (1e-2, 3e-5)
    sched.step(5)  # poly: lr0 * (1 - 5/10) ** 0.9
    assert sgd.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**0.9)
    with pytest.raises(UserError, match="--optimizer must be one of sgd, adam, got 'adagrad'"):
        check_optimizer_name("adagrad", "--optimizer")


def test_short_trainer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from recokd.nnunet.short_trainer import _env_int

    monkeypatch.setenv("RECOKD_SHORT_ITERS", "7")
    assert _env_int("RECOKD_SHORT_ITERS", 10) == 7
    monkeypatch.delenv("RECOKD_SHORT_ITERS")
    assert _env_int("RECOKD_SHORT_ITERS", 10) == 10
    for bad in ("0", "x", "-2"):
        monkeypatch.setenv("RECOKD_SHORT_ITERS", bad)
        with pytest.raises(UserError, match="RECOKD_SHORT_ITERS must be a positive integer"):
            _env_int("RECOKD_SHORT_ITERS", 10)


# ---------------------------------------------------------------------------- DDP gradient sync


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from recokd.nnunet.ddp import all_reduce_mean_grads

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        both = torch.nn.Parameter(torch.zeros(2, 3))
        only_rank1 = torch.nn.Parameter(torch.zeros(4))
        never = torch.nn.Parameter(torch.zeros(1))
        both.grad = torch.full((2, 3), float(rank + 1))  # ranks: 1 and 2 -> mean 1.5
        if rank == 1:
            only_rank1.grad = torch.arange(4.0)  # rank 0 has None -> counts as zeros
        all_reduce_mean_grads([both, only_rank1, never])
        torch.save({"both": both.grad, "only_rank1": only_rank1.grad, "never": never.grad},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_reduce_mean_grads_two_processes(tmp_path: Path) -> None:
    """The KD parameters' gradients are averaged across DDP ranks exactly like DDP averages the
    student's (gloo, 2 CPU processes)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["both"], torch.full((2, 3), 1.5))
        assert torch.equal(got["only_rank1"], torch.arange(4.0) / 2)
        assert got["never"] is None


def test_all_reduce_mean_grads_is_noop_without_process_group() -> None:
    from recokd.nnunet.ddp import all_reduce_mean_grads

    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    all_reduce_mean_grads([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))


# ---------------------------------------------------------------------------- CLI errors (no dataset)


def test_train_requires_nnunet_env(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("nnUNet_results", raising=False)
    monkeypatch.setenv("nnUNet_preprocessed", "/nonexistent")
    assert main(["train", "1", "3d_fullres", "0", "--teacher", "/t", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "nnUNet_results is not set" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "1", "3d_fullres", "x", "--teacher", "/t", "--device", "cpu"], "FOLD must be"),
        (["train", "1", "3d_fullres", "0", "--c", "--overwrite", "--device", "cpu"], "exclude each other"),
        (["train", "1", "3d_fullres", "0", "--teacher", "/t", "--device", "cpu", "--num-gpus", "2"],
         "needs --device cuda"),
    ],
)
def test_train_argument_errors(argv, message, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_train_cuda_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert main(["train", "1", "3d_fullres", "0", "--teacher", "/t"]) == 2  # nnU-Net's default: cuda
    assert "CUDA is not available" in capsys.readouterr().err


def test_kd_option_parsing() -> None:
    from recokd.cli import build_parser

    args = build_parser().parse_args(
        ["train", "1", "3d_fullres", "0", "--kd-option", "alpha=0.5", "--kd-option", "context=affinity",
         "--kd-option", "level_weights=[1, 0]", "--ema"])
    assert args.kd_option == [("alpha", 0.5), ("context", "affinity"), ("level_weights", [1, 0])]
    assert args.ema == 0.999
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "1", "3d_fullres", "0", "--kd-option", "novalue"])


def test_resume_flags_must_match_saved_settings() -> None:
    from recokd.cli import build_parser
    from recokd.nnunet.cli import _check_resume_flags, _explicit_settings

    saved = KDSettings(teacher="/t", kd_weight=0.01, epochs=10)
    args = build_parser().parse_args(["train", "1", "3d_fullres", "0", "--c", "--epochs", "10"])
    _check_resume_flags(saved, args, _explicit_settings(args), Path("s.json"))  # same value: fine
    args = build_parser().parse_args(["train", "1", "3d_fullres", "0", "--c", "--kd-weight", "0.1",
                                      "--ema"])
    with pytest.raises(UserError) as e:
        _check_resume_flags(saved, args, _explicit_settings(args), Path("s.json"))
    assert "kd_weight: given 0.1, saved 0.01" in str(e.value) and "ema_decay" in str(e.value)


def test_predict_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    (tmp_path / "Dataset555_X" / "nnUNetTrainerReCoKD__A__3d_fullres").mkdir(parents=True)
    (tmp_path / "Dataset555_X" / "nnUNetTrainerReCoKD__B__3d_fullres").mkdir(parents=True)
    out = str(tmp_path / "o")
    images = str(tmp_path / "images")  # an output folder inside the input folder would be refused first
    assert main(["predict", "-i", images, "-o", out, "-d", "555", "--device", "cpu"]) == 2
    assert "several plans" in capsys.readouterr().err
    assert main(["predict", "-i", images, "-o", str(tmp_path / "o"), "-d", "555", "-p", "A",
                 "--device", "cpu"]) == 2
    assert "no fold of" in capsys.readouterr().err


def test_an_interrupted_train_prints_the_command_that_continues_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import recokd.nnunet.cli as nnunet_cli

    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(nnunet_cli, "_train", interrupted)
    rc = main(["train", "Dataset004_Hippocampus", "3d_fullres", "0", "--teacher", "/t", "-t", "3",
               "-tr", "nnUNetTrainerReCoKDNoDA", "--seed", "1", "--device", "cpu", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err
    assert ("continue from the last checkpoint with: recokd train Dataset004_Hippocampus 3d_fullres 0 -t 3 "
            "-tr nnUNetTrainerReCoKDNoDA --seed 1 --device cpu --c") in err


def test_settings_schedule_names_are_the_kd_cores():
    """The CLI's schedule names (spelled in settings.py so that it imports no torch) are kd.schedules'."""
    from recokd.kd.schedules import SCHEDULES
    from recokd.nnunet.settings import SCHEDULE_NAMES

    assert tuple(SCHEDULE_NAMES) == tuple(SCHEDULES)
