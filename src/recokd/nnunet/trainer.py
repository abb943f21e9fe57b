"""``nnUNetTrainerReCoKD``: nnU-Net's trainer with a frozen teacher and a feature-KD loss.

The student is the network nnU-Net builds from the (student) plans it is started with; everything
else -- data loading, augmentation, deep supervision, the Dice+CE loss, SGD with poly LR, AMP,
DDP, validation, checkpoints, the results folder layout -- is stock ``nnUNetTrainer`` (nnunetv2
2.8). What this class adds:

* **Settings**: read from a JSON file (:mod:`recokd.nnunet.settings`), because nnU-Net
  re-creates trainers by class name with a fixed signature (DDP workers, ``--c``,
  ``nnUNetv2_predict``). Without settings the class is a plain trainer of the student network,
  so ``nnUNetv2_predict`` and ``nnUNetv2_train --val`` never need the teacher.
* **Teacher**: :func:`recokd.nnunet.trained_model.load_trained_model` on the training device, frozen (eval,
  no gradients), checked against the student with
  :func:`recokd.nnunet.compat.check_teacher_student_compatible` before anything is trained.
* **Loss**: ``loss = seg_loss + lambda(epoch) * kd["loss"]`` with a
  :class:`recokd.kd.distiller.Distiller` (student features at every encoder stage but the
  bottleneck; the teacher runs its encoder only), ``lambda`` from
  :func:`recokd.kd.schedules.build_schedule` (evaluated once per epoch). The deep-supervision
  target list (highest resolution first) is the KD target. Forward and both losses run inside
  nnU-Net's autocast (CUDA only); the KD loss module computes in float32 itself.
* **Optimiser**: nnU-Net's SGD (Nesterov, momentum 0.99, weight decay 3e-5) over the student's
  parameters *and* the KD method's trainable parameters (adapters, context blocks), one
  parameter group, so the poly LR schedule applies to all of them. Gradients of both are clipped
  to norm 12 (separately: the student's clipping is exactly nnU-Net's).
* **EMA** (optional): :class:`recokd.kd.ema.StudentEMA` updated after every optimiser step;
  per-epoch validation (pseudo Dice, hence ``checkpoint_best``) and the final validation use
  the EMA weights.
* **Checkpoints**: nnU-Net's format plus a ``"recokd"`` entry (see :meth:`save_checkpoint`);
  written atomically (temporary file + rename), so a run killed while saving keeps its previous
  checkpoint and ``--c`` resumes exactly (KD modules, optimiser incl. KD parameters, EMA, epoch).
* **Random streams**: the teacher and the KD method are built on isolated generators
  (:func:`recokd.nnunet.seeding.isolated_rng`) and, with ``RECOKD_SEED``, every generator is
  seeded right before the student is built, so the student's initialisation and its data stream
  are those of a stock run of the same seed (``nnUNetTrainerShort``): a run with KD weight 0
  reproduces it bit for bit on the CPU (see :mod:`recokd.nnunet.seeding`).
* **Beyond the labels** (docs/method.md section 8): ``teacher_ensemble_folds`` makes the teacher a fold
  ensemble (mean of the folds' logits for soft targets and pseudo label maps; features of
  ``teacher_fold``); ``unlabelled`` adds patches of preprocessed unlabelled scans to every batch
  (:mod:`recokd.nnunet.unlabelled`); ``label_free`` treats every training patch as unlabelled. The label
  loss (nnU-Net's Dice+CE) is computed on the labelled patches only; the KD term on all of them, with the
  teacher's prediction as the target of the unlabelled ones. With neither, nothing changes.
* **Logging**: per epoch, the means over the epoch's iterations of ``seg_loss``, ``kd_loss``
  (unweighted) and every KD component (``kd/<component>``, ``kd/<component>/<level>``), plus
  ``kd_lambda``, in nnU-Net's logger (and so in the checkpoint and W&B) and in the text log.

What ``network_weights`` of a checkpoint holds: the weights to *evaluate* -- the EMA weights when
EMA is on, the trained weights otherwise. This is what ``nnUNetv2_predict`` loads from
``checkpoint_final.pth`` (and ``checkpoint_best.pth``, selected on the EMA's pseudo Dice). With
EMA, the trained (non-averaged) weights needed to resume are in
``checkpoint["recokd"]["train_network_weights"]``.

DDP: nnU-Net wraps only the student in ``DistributedDataParallel``; the KD method's parameters
are not part of it, so after ``backward`` their gradients are averaged over the ranks by one
all-reduce of a flattened buffer (:func:`recokd.nnunet.ddp.all_reduce_mean_grads`), in a fixed
parameter order and before the grad scaler's ``unscale_``/inf check, so every rank takes the same
optimiser step (the KD method is built identically on every rank).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from torch import autocast
from torch import distributed as dist

from recokd.atomic_files import atomic_path
from recokd.errors import UserError
from recokd.kd.ema import unwrap
from recokd.nnunet.ddp import all_reduce_mean_grads
from recokd.nnunet.guards import FiniteLossGuard, read_checkpoint
from recokd.nnunet.layout import SETTINGS_ENV
from recokd.nnunet.optim import build_optimizer
from recokd.nnunet.progress import TrainingProgress
from recokd.nnunet.seeding import SeededInitialization, isolated_rng, kd_module_seed, seed_from_env
from recokd.nnunet.settings import SETTINGS_FILE, KDSettings, resolve_settings, write_settings

#: key of the KD extras in a checkpoint
CHECKPOINT_KEY = "recokd"
#: version of the ``"recokd"`` checkpoint entry
CHECKPOINT_FORMAT = 1
#: key under which train_step hands its KD logs to on_train_epoch_end
_STEP_LOGS = "recokd_logs"
#: nnU-Net's gradient clipping norm
GRAD_CLIP = 12.0


class nnUNetTrainerReCoKD(FiniteLossGuard, TrainingProgress, SeededInitialization, nnUNetTrainer):
    """nnU-Net trainer that distils a frozen teacher into the student it trains (see module docs)."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's signature
    ):
        # nnUNetTrainer.__init__ pops this key (run_training always sets it)
        plans.setdefault("continue_training", False)
        continue_training = bool(plans["continue_training"])
        super().__init__(plans, configuration, fold, dataset_json, device)

        self.kd_settings: KDSettings | None
        self.kd_settings_file: Path | None
        self.kd_settings, self.kd_settings_file = resolve_settings(self.output_folder, continue_training)
        self.teacher = None  # LoadedModel, -> initialize()
        self.teacher_ensemble = []  # further LoadedModels (folds), -> initialize()
        self.kd_method = None  # KDMethod, -> configure_optimizers()
        self.distiller = None  # Distiller, -> initialize()
        self.weight_ema = None  # StudentEMA, -> initialize() (if enabled)
        self.kd_schedule = None  # epoch -> lambda, -> initialize()
        self.kd_lambda = 0.0
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []
        self._stashed_weights: dict[str, torch.Tensor] | None = None

        if self.kd_settings is not None:
            s = self.kd_settings
            self.num_epochs = s.epochs
            self.num_iterations_per_epoch = s.iters_per_epoch
            self.num_val_iterations_per_epoch = s.val_iters
            self.save_every = s.save_every
            if self.local_rank == 0 and self.output_folder is not None:
                local = Path(self.output_folder) / SETTINGS_FILE
                if self.kd_settings_file is None or self.kd_settings_file.resolve() != local.resolve():
                    write_settings(s, local)  # so that --c finds them without RECOKD_SETTINGS
            self.print_to_log_file(f"ReCo-KD settings (from {self.kd_settings_file}): {s.to_dict()}")

    # ------------------------------------------------------------------ setup

    def initialize(self):
        if not self.was_initialized and self.kd_settings is not None and self.teacher is None:
            self._load_teacher()
        super().initialize()  # builds the student, calls configure_optimizers, wraps DDP
        if self.kd_method is not None and self.distiller is None:
            self._finish_kd_setup()

    def _load_teacher(self) -> None:
        from recokd.nnunet.compat import check_teacher_student_compatible
        from recokd.nnunet.trained_model import load_trained_model

        s = self.kd_settings
        assert s is not None
        with isolated_rng():  # building the teacher network must not shift the student's stream
            teacher = load_trained_model(
                s.teacher, fold=s.teacher_fold, checkpoint=s.teacher_checkpoint, device=self.device
            )
        num_input_channels = determine_num_input_channels(
            self.plans_manager, self.configuration_manager, self.dataset_json
        )
        check_teacher_student_compatible(
            teacher,
            self.plans_manager,
            self.configuration_manager,
            self.dataset_json,
            student_num_input_channels=num_input_channels,
        )
        self.teacher = teacher
        self.print_to_log_file(
            f"ReCo-KD teacher: {teacher.checkpoint_path} (trainer {teacher.trainer_name}, plans "
            f"{teacher.plans_manager.plans_name}, configuration {teacher.configuration_name}), frozen"
        )
        self.teacher_ensemble = []
        for fold in s.teacher_ensemble_folds:
            with isolated_rng():
                member = load_trained_model(s.teacher, fold=fold, checkpoint=s.teacher_checkpoint,
                                            device=self.device)
            check_teacher_student_compatible(member, self.plans_manager, self.configuration_manager,
                                             self.dataset_json, student_num_input_channels=num_input_channels)
            self.teacher_ensemble.append(member)
        if self.teacher_ensemble:
            self.print_to_log_file(
                f"ReCo-KD teacher ensemble: folds {[s.teacher_fold, *s.teacher_ensemble_folds]} (mean of "
                f"their logits for soft targets and pseudo label maps; features of fold {s.teacher_fold})"
            )

    def configure_optimizers(self):
        """nnU-Net's SGD (or its AdamW variant, settings field ``optimizer``) + poly LR, over the
        student's and the KD method's trainable parameters (:mod:`recokd.nnunet.optim`)."""
        if self.teacher is not None and self.kd_method is None:
            # own generator: the student's data stream stays that of a stock run of the same seed
            with isolated_rng(kd_module_seed(seed_from_env())):
                self.kd_method = self._build_kd_method()
        params = list(self.network.parameters())
        if self.kd_method is not None:
            params += [p for p in self.kd_method.parameters() if p.requires_grad]
        name = self.kd_settings.optimizer if self.kd_settings is not None else "sgd"
        return build_optimizer(name, params, self.initial_lr, self.weight_decay, self.num_epochs)

    def _build_kd_method(self):
        from recokd.nnunet.kd_setup import build_kd_for, kd_options

        s = self.kd_settings
        assert s is not None and self.teacher is not None
        where = f"KD settings {self.kd_settings_file}"
        lm = self.label_manager
        options = kd_options(s.method, s.method_options, lm.ignore_label, bool(lm.has_regions),
                             warn=self.print_to_log_file, where=where)
        num_input_channels = determine_num_input_channels(
            self.plans_manager, self.configuration_manager, self.dataset_json
        )
        input_shape = (1, num_input_channels, *self.configuration_manager.patch_size)
        built = build_kd_for(s.method, options, unwrap(self.network), self.teacher.network,
                             lm.num_segmentation_heads, input_shape, where=where)
        self.student_taps, self.teacher_taps = built.student_taps, built.teacher_taps
        method = built.method
        self.print_to_log_file(
            f"ReCo-KD method {s.method!r} options {options}; taps {self.student_taps}; student channels "
            f"{built.student_channels}, teacher channels {built.teacher_channels}; "
            f"{sum(p.numel() for p in method.parameters() if p.requires_grad)} trainable KD parameters"
        )
        return method.to(self.device)

    def _finish_kd_setup(self) -> None:
        from recokd.kd.distiller import Distiller
        from recokd.kd.ema import StudentEMA
        from recokd.kd.schedules import build_schedule

        s = self.kd_settings
        assert s is not None and self.teacher is not None and self.kd_method is not None
        # self.network is DDP- / compile-wrapped by now: the Distiller runs the student through the
        # wrapper (DDP gradient sync) and resolves its taps on the unwrapped module
        self.distiller = Distiller(
            self.teacher.network, self.network, self.kd_method, self.student_taps, self.teacher_taps,
            ensemble=[m.network for m in self.teacher_ensemble], regions=bool(self.label_manager.has_regions),
        )
        if s.ema_decay is not None:
            self.weight_ema = StudentEMA(self.network, decay=s.ema_decay)
        self.kd_schedule = build_schedule(s.schedule, s.kd_weight, s.warmup, self.num_epochs)

    # ------------------------------------------------------------------ data: unlabelled scans

    def _unlabelled_batch_size(self) -> int:
        from recokd.nnunet.unlabelled import unlabelled_batch_size

        s = self.kd_settings
        if s is None or s.unlabelled is None:
            return 0
        return unlabelled_batch_size(self.batch_size, s.unlabelled_share)

    def get_dataloaders(self):
        """nnU-Net's loaders. With unlabelled scans (settings ``unlabelled``, ``unlabelled_share > 0``) the
        labelled loaders take ``B - B_u`` patches per batch, with nnU-Net's probabilistic foreground
        oversampling (the fixed "last 33% of the batch" rule gives a batch of one patch no foreground
        patch at all), and the training loader yields :class:`recokd.nnunet.unlabelled.MixedBatches`."""
        n_u = self._unlabelled_batch_size()
        if n_u == 0:
            return super().get_dataloaders()
        from recokd.nnunet.unlabelled import MixedBatches

        full, probabilistic = self.batch_size, self.probabilistic_oversampling
        self.batch_size, self.probabilistic_oversampling = full - n_u, True
        try:
            train, val = super().get_dataloaders()
        finally:
            self.batch_size, self.probabilistic_oversampling = full, probabilistic
        return MixedBatches(train, self._unlabelled_loader(n_u, _data_loader_of(train).transforms)), val

    def _unlabelled_loader(self, batch_size: int, transforms):
        """nnU-Net's data loader over the preprocessed unlabelled scans (random patches, the training
        transforms), wrapped in nnU-Net's augmenter as its own training loader is."""
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
        from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
        from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        folder = self._unlabelled_folder()
        if not folder.is_dir() or not any(folder.glob("*.pkl")):
            raise UserError(f"no preprocessed unlabelled scans in {folder}: start the run with `recokd train "
                            "... --unlabelled DIR`, which preprocesses them")
        dataset = self.dataset_class(str(folder))
        initial_patch_size = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[2]
        loader = nnUNetDataLoader(dataset, batch_size, initial_patch_size,
                                  self.configuration_manager.patch_size, self.label_manager,
                                  oversample_foreground_percent=0.0, transforms=transforms)
        self.print_to_log_file(f"unlabelled scans: {len(dataset.identifiers)} from {folder}, {batch_size} "
                               f"of {self.batch_size} patches per batch")
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=processes,
                                            num_cached=max(6, processes // 2), seeds=None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def _unlabelled_folder(self) -> Path:
        from recokd.nnunet.layout import data_identifier
        from recokd.nnunet.unlabelled import unlabelled_preprocessed_folder

        identifier = data_identifier(self.plans_manager.plans, self.configuration_name)
        return unlabelled_preprocessed_folder(Path(self.preprocessed_dataset_folder_base),
                                              Path(self.kd_settings.unlabelled), identifier)

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        if self.distiller is None:
            raise UserError(
                f"{type(self).__name__} cannot train without KD settings: start it with `recokd train`, "
                f"or point the environment variable {SETTINGS_ENV} at a settings JSON file (fresh start), "
                f"or continue (--c) a run whose fold folder holds {SETTINGS_FILE}"
            )
        super().on_train_start()
        self._progress_start()

    def on_train_end(self):
        self._progress_close()
        from recokd.nnunet.unlabelled import MixedBatches

        if isinstance(self.dataloader_train, MixedBatches):  # nnU-Net finishes only its own augmenter types
            self.dataloader_train._finish()
        super().on_train_end()

    # ------------------------------------------------------------------ training

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.kd_schedule is not None:
            self.kd_lambda = float(self.kd_schedule(self.current_epoch))
            self.kd_method.train()
            self.print_to_log_file(f"KD weight lambda: {self.kd_lambda:.6g}")

    def train_step(self, batch: dict) -> dict:
        if self.distiller is None:  # pragma: no cover - on_train_start refuses this
            return super().train_step(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [i.to(self.device, non_blocking=True) for i in target]
        else:
            target = target.to(self.device, non_blocking=True)

        labelled = self._labelled_mask(batch, data.shape[0])

        self.optimizer.zero_grad(set_to_none=True)
        # nnU-Net's pattern: autocast on CUDA only (CPU autocast is slow, MPS complains)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            pseudo = self.kd_settings.pseudo_label_loss and labelled is not None
            output, kd = self.distiller(data, target, labelled, return_target=pseudo)
            # with pseudo_label_loss: every patch, the unlabelled ones against the teacher's segmentation
            seg_loss = self.loss(output, kd.pop("target")) if pseudo else \
                self._label_loss(output, target, labelled)
            loss = seg_loss + self.kd_lambda * kd["loss"]

        kd_params = list(self.distiller.kd_parameters())
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self._all_reduce_kd_grads(kd_params)
            self.grad_scaler.unscale_(self.optimizer)
            self._clip_gradients(kd_params)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self._all_reduce_kd_grads(kd_params)
            self._clip_gradients(kd_params)
            self.optimizer.step()
        if self.weight_ema is not None:
            self.weight_ema.update(self.network)

        logs = {k: float(v) for k, v in kd.items() if k != "loss" and isinstance(v, (int, float))}
        logs["kd_loss"] = float(kd["loss"].detach())
        logs["seg_loss"] = float(seg_loss.detach())
        self._check_finite_loss(loss.detach(), {"seg_loss": logs["seg_loss"], "kd_loss": logs["kd_loss"]})
        self._progress_tick()
        return {"loss": loss.detach().cpu().numpy(), _STEP_LOGS: logs}

    def _labelled_mask(self, batch: dict, batch_size: int) -> torch.Tensor | None:
        """``B`` booleans (True: the patch has a label), or ``None`` when every patch is labelled."""
        if self.kd_settings.label_free:
            return torch.zeros(batch_size, dtype=torch.bool, device=self.device)
        labelled = batch.get("labelled")
        return None if labelled is None else labelled.to(self.device)

    def _label_loss(self, output, target, labelled: torch.Tensor | None) -> torch.Tensor:
        """nnU-Net's loss (Dice+CE, deep supervision) over the labelled patches; 0 when there are none."""
        if labelled is None:
            return self.loss(output, target)
        if not bool(labelled.any()):
            return torch.zeros((), device=self.device)
        index = labelled.nonzero().flatten()
        if isinstance(output, (list, tuple)):
            return self.loss([o[index] for o in output], [t[index] for t in target])
        return self.loss(output[index], target[index])

    def _clip_gradients(self, kd_params: list[torch.nn.Parameter]) -> None:
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), GRAD_CLIP)
        if kd_params:
            torch.nn.utils.clip_grad_norm_(kd_params, GRAD_CLIP)

    def _all_reduce_kd_grads(self, kd_params: list[torch.nn.Parameter]) -> None:
        """Average the KD parameters' gradients over the DDP ranks (the student's are DDP's job)."""
        if self.is_ddp:
            all_reduce_mean_grads(kd_params)

    def on_train_epoch_end(self, train_outputs: list[dict]):
        step_logs = [o.pop(_STEP_LOGS, {}) for o in train_outputs]
        super().on_train_epoch_end(train_outputs)
        if self.distiller is None:
            return
        keys = sorted({k for logs in step_logs for k in logs})
        means = {k: float(np.nanmean([logs.get(k, math.nan) for logs in step_logs])) for k in keys}
        if self.is_ddp:
            gathered: list[dict[str, float] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, means)
            keys = sorted({k for g in gathered if g for k in g})
            means = {k: float(np.nanmean([g.get(k, math.nan) for g in gathered if g])) for k in keys}
        values = {"kd_lambda": self.kd_lambda}
        for k, v in means.items():
            values[k if k in ("kd_loss", "seg_loss") else f"kd/{k}"] = v
        self._log_values(values)
        summary = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k.count("/") < 2)
        self.print_to_log_file(f"KD: {summary}")

    def _log_values(self, values: dict[str, float]) -> None:
        """Log ``values`` for the current epoch in nnU-Net's logger, which only knows its own keys.

        New keys are registered (padded with NaN for earlier epochs); KD keys of earlier epochs
        that are missing now get NaN, so every list keeps one entry per epoch (nnU-Net's progress
        plot takes the shortest list as the epoch count).
        """
        local = getattr(self.logger, "local_logger", self.logger)  # nnunetv2 >= 2.7 / older
        store: dict[str, list] = local.my_fantastic_logging
        epoch = self.current_epoch
        known = {k for k in store if k.startswith("kd/") or k in ("kd_lambda", "kd_loss", "seg_loss")}
        for key in sorted(known - set(values)):
            values[key] = math.nan
        for key, value in values.items():
            lst = store.setdefault(key, [])
            if len(lst) < epoch:
                lst.extend([math.nan] * (epoch - len(lst)))
            self.logger.log(key, value, epoch)

    # ------------------------------------------------------------------ validation with EMA weights

    def _swap_in_ema(self) -> None:
        if self.weight_ema is None or self._stashed_weights is not None:
            return
        net = unwrap(self.network)
        self._stashed_weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.weight_ema.module.state_dict())

    def _swap_back(self) -> None:
        if self._stashed_weights is None:
            return
        unwrap(self.network).load_state_dict(self._stashed_weights)
        self._stashed_weights = None

    def on_validation_epoch_start(self):
        self._swap_in_ema()
        super().on_validation_epoch_start()

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        try:
            super().on_validation_epoch_end(val_outputs)
        finally:
            self._swap_back()

    def perform_actual_validation(self, save_probabilities: bool = False):
        self._swap_in_ema()
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self._swap_back()

    # ------------------------------------------------------------------ checkpoints

    def _kd_checkpoint_entry(self, train_weights: dict[str, torch.Tensor]) -> dict[str, Any] | None:
        if self.kd_method is None:
            return None
        s = self.kd_settings
        assert s is not None
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": s.to_dict(),
            "kd_method_state": self.kd_method.state_dict(),
            "student_taps": list(self.student_taps),
            "teacher_taps": list(self.teacher_taps),
            "teacher_checkpoint": str(self.teacher.checkpoint_path) if self.teacher is not None else None,
            "schedule": {
                "name": s.schedule,
                "lambda_max": s.kd_weight,
                "warmup_fraction": s.warmup,
                "total_epochs": self.num_epochs,
                "last_lambda": self.kd_lambda,
            },
            "ema": self.weight_ema.state_dict() if self.weight_ema is not None else None,
            # with EMA, network_weights holds the EMA weights; these are the ones to resume from
            "train_network_weights": train_weights if self.weight_ema is not None else None,
            "network_weights_are": "ema" if self.weight_ema is not None else "student",
        }

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (same keys, nnunetv2 2.8) plus ``"recokd"``, written atomically.

        ``checkpoint["recokd"]`` (``None`` when the trainer runs without KD settings) holds:
        ``format``, ``settings`` (the KD settings), ``kd_method_state`` (adapters, context blocks),
        ``student_taps``/``teacher_taps``, ``teacher_checkpoint``, ``schedule`` (its parameters
        and the last lambda), ``ema`` (:meth:`StudentEMA.state_dict` or ``None``),
        ``train_network_weights`` (the trained weights when ``network_weights`` holds the EMA
        weights, else ``None``) and ``network_weights_are`` (``"ema"`` or ``"student"``).
        Only tensors and plain python values: loading it needs neither reco-kd nor the teacher.
        """
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        weights = unwrap(self.network).state_dict()
        extras = self._kd_checkpoint_entry(weights)
        network_weights = self.weight_ema.module.state_dict() if self.weight_ema is not None else weights
        checkpoint = {
            "network_weights": network_weights,
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            CHECKPOINT_KEY: extras,
        }
        with atomic_path(filename) as partial:  # torch.save's RuntimeError on a full disk: one line
            torch.save(checkpoint, partial)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnU-Net's ``load_checkpoint`` (also for a checkpoint dict) plus the KD state.

        With KD set up (training / ``--c``): restores the KD method, the optimiser (which holds the
        KD parameters), the EMA and the trained weights. Without KD settings (``--val``) only the
        network is restored, with ``network_weights`` (the EMA weights if EMA was on); the
        optimiser state of a KD checkpoint is then skipped (it includes the KD parameters).
        """
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, dict):
            checkpoint, where = filename_or_checkpoint, "checkpoint"
        else:
            where = str(filename_or_checkpoint)
            checkpoint = read_checkpoint(where, self.device)
        net = unwrap(self.network)
        own_keys = net.state_dict().keys()

        def fix_keys(state: dict) -> dict:  # DataParallel/DDP prefixes, as nnU-Net does
            return {
                (k[7:] if k not in own_keys and k.startswith("module.") else k): v for k, v in state.items()
            }

        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get(
            "inference_allowed_mirroring_axes", self.inference_allowed_mirroring_axes
        )
        net.load_state_dict(fix_keys(checkpoint["network_weights"]))
        extras = checkpoint.get(CHECKPOINT_KEY)

        if self.kd_method is None:
            if extras is None:
                self.optimizer.load_state_dict(checkpoint["optimizer_state"])
            else:
                self.print_to_log_file(
                    "KD settings not loaded: restored the network only "
                    "(the optimizer state of the KD run is skipped)"
                )
        else:
            if extras is None:
                raise UserError(
                    f"{where} is not a ReCo-KD checkpoint (no '{CHECKPOINT_KEY}' entry): cannot continue KD "
                    "training from it. Start fresh (recokd train --overwrite) instead."
                )
            if extras.get("format") != CHECKPOINT_FORMAT:
                raise UserError(f"{where}: unsupported ReCo-KD checkpoint format {extras.get('format')!r}")
            try:
                self.kd_method.load_state_dict(extras["kd_method_state"])
                self.optimizer.load_state_dict(checkpoint["optimizer_state"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise UserError(
                    f"{where}: the KD state does not fit the KD method built from the settings "
                    f"({self.kd_settings_file}): {e}"
                ) from e
            if extras.get("settings") != self.kd_settings.to_dict():
                self.print_to_log_file(
                    f"WARNING: KD settings differ from those saved in {where}: now "
                    f"{self.kd_settings.to_dict()}, saved {extras.get('settings')}"
                )
            if extras.get("train_network_weights") is not None:
                net.load_state_dict(fix_keys(extras["train_network_weights"]))
            if self.weight_ema is not None:
                if extras.get("ema") is not None:
                    self.weight_ema.load_state_dict(extras["ema"])
                    self.weight_ema.to(self.device)
                else:  # EMA switched on for a run that had none: start averaging from here
                    from recokd.kd.ema import StudentEMA

                    self.weight_ema = StudentEMA(self.network, decay=self.weight_ema.decay)
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])


def _data_loader_of(augmenter):
    """The nnU-Net data loader inside one of batchgenerators' augmenters."""
    for name in ("data_loader", "generator"):  # SingleThreadedAugmenter / NonDetMultiThreadedAugmenter
        loader = getattr(augmenter, name, None)
        if loader is not None:
            return loader
    raise TypeError(f"cannot find the data loader of {type(augmenter).__name__}")


class nnUNetTrainerReCoKDNoDA(nnUNetTrainerReCoKD, nnUNetTrainerNoDA):
    """:class:`nnUNetTrainerReCoKD` without data augmentation (nnU-Net's ``nnUNetTrainerNoDA``): the
    KD counterpart of :class:`recokd.nnunet.short_trainer.nnUNetTrainerShortNoDA`."""
