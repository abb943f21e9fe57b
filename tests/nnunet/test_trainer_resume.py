"""nnUNetTrainerReCoKD through nnU-Net's own entry points (in-process, CPU): an interrupted run
resumes exactly, checkpoints hold what the docs say, and the class works without settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from recokd.errors import UserError
from recokd.nnunet.settings import SETTINGS_ENV, SETTINGS_FILE, KDSettings, write_settings
from tests.nnunet.conftest import CONFIGURATION, DATASET_ID

TRAINER = "nnUNetTrainerReCoKD"
FOLD = 1  # test_e2e_kd uses fold 0 of the same results folder


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _optimizer_states_equal(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(_states_equal(a["state"][i], b["state"][i]) for i in a["state"])


def _run_one_epoch(tr) -> None:
    """What nnUNetTrainer.run_training does for one epoch."""
    tr.on_epoch_start()
    tr.on_train_epoch_start()
    outputs = [tr.train_step(next(tr.dataloader_train)) for _ in range(tr.num_iterations_per_epoch)]
    tr.on_train_epoch_end(outputs)
    with torch.no_grad():
        tr.on_validation_epoch_start()
        val = [tr.validation_step(next(tr.dataloader_val)) for _ in range(tr.num_val_iterations_per_epoch)]
        tr.on_validation_epoch_end(val)
    tr.on_epoch_end()


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(kd_env, teacher: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    from recokd.nnunet.plans import make_student_plans

    sp = make_student_plans(DATASET_ID, "nnUNetPlans", CONFIGURATION, 2)
    settings = KDSettings(teacher=str(teacher), epochs=2, iters_per_epoch=2, val_iters=1, save_every=1,
                          ema_decay=0.9, schedule="constant", kd_weight=0.05)
    monkeypatch.setenv(SETTINGS_ENV, str(write_settings(settings, tmp_path / "settings.json")))
    cpu = torch.device("cpu")

    # --- a fresh run, interrupted after its first epoch (checkpoint_latest is written at its end)
    tr = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, FOLD, TRAINER, sp.identifier, False,
                               device=cpu)
    fold_dir = Path(tr.output_folder)
    assert tr.kd_settings == settings and (fold_dir / SETTINGS_FILE).is_file()  # copied for --c
    assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.save_every) == (2, 2, 1)
    tr.on_train_start()
    teacher_net = tr.teacher.network
    assert not teacher_net.training and not any(p.requires_grad for p in teacher_net.parameters())
    kd_params = {id(p) for p in tr.kd_method.parameters()}
    optimised = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert kd_params and kd_params <= optimised  # adapters/context blocks are trained
    assert {id(p) for p in tr.network.parameters()} <= optimised
    teacher_before = {k: v.clone() for k, v in teacher_net.state_dict().items()}
    kd_before = {k: v.clone() for k, v in tr.kd_method.state_dict().items()}
    _run_one_epoch(tr)
    assert not teacher_net.training and _states_equal(teacher_before, teacher_net.state_dict())
    assert not _states_equal(kd_before, tr.kd_method.state_dict())  # KD modules learned
    latest = fold_dir / "checkpoint_latest.pth"
    assert latest.is_file() and tr.current_epoch == 1
    expected = {
        "kd": {k: v.clone() for k, v in tr.kd_method.state_dict().items()},
        "net": {k: v.clone() for k, v in tr.network.state_dict().items()},
        "ema": {k: v.clone() for k, v in tr.weight_ema.module.state_dict().items()},
        "opt": tr.optimizer.state_dict(),
        "lambda": tr.logger.get_value("kd_lambda", step=None),
        "seg": tr.logger.get_value("seg_loss", step=None),
    }
    assert expected["lambda"] == [0.05] and math.isfinite(expected["seg"][0])
    ckpt = torch.load(latest, map_location="cpu", weights_only=False)
    extras = ckpt["recokd"]
    assert extras["network_weights_are"] == "ema"
    assert _states_equal(ckpt["network_weights"], expected["ema"])  # what nnUNetv2_predict loads
    assert _states_equal(extras["train_network_weights"], expected["net"])
    assert not _states_equal(expected["ema"], expected["net"])
    assert extras["settings"] == settings.to_dict() and extras["schedule"]["total_epochs"] == 2
    del tr

    # --- --c in a new process would find the settings in the fold folder, not via RECOKD_SETTINGS
    monkeypatch.delenv(SETTINGS_ENV)
    tr2 = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, FOLD, TRAINER, sp.identifier, True,
                                device=cpu)
    assert tr2.kd_settings == settings
    maybe_load_checkpoint(tr2, True, False)
    assert tr2.current_epoch == 1
    assert _states_equal(tr2.kd_method.state_dict(), expected["kd"])
    assert _states_equal(tr2.network.state_dict(), expected["net"])  # trained, not EMA, weights
    assert _states_equal(tr2.weight_ema.module.state_dict(), expected["ema"])
    assert _optimizer_states_equal(tr2.optimizer.state_dict(), expected["opt"])
    assert tr2.logger.get_value("kd_lambda", step=None) == expected["lambda"]
    tr2.run_training()  # epoch 1 only, then checkpoint_final
    final = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and not latest.exists()
    logging = final["logging"]
    assert len(logging["kd_lambda"]) == len(logging["train_losses"]) == len(logging["kd/fg"]) == 2
    assert logging["seg_loss"][0] == expected["seg"][0]  # epoch 0 from the first run, kept
    assert _states_equal(final["network_weights"], final["recokd"]["ema"]["weights"])
    assert final["recokd"]["ema"]["num_updates"] == 4  # 2 epochs x 2 iterations, across the restart
    assert (fold_dir / "progress.png").is_file()  # nnU-Net's plot copes with the extra keys

    # --- without settings (nnUNetv2_train --val): no teacher is loaded, the EMA weights are evaluated
    tr3 = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, FOLD, TRAINER, sp.identifier, False,
                                device=cpu)
    assert tr3.kd_settings is None
    tr3.load_checkpoint(str(fold_dir / "checkpoint_final.pth"))
    assert tr3.teacher is None and tr3.kd_method is None
    assert _states_equal(tr3.network.state_dict(), final["network_weights"])
    with pytest.raises(UserError, match="cannot train without KD settings"):
        tr3.on_train_start()
