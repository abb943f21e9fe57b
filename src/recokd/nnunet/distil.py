"""Label-free distillation of a trained nnU-Net model on the user's own scans (``recokd distil``,
docs/method.md section 8).

Input: an nnU-Net results folder (plans.json, dataset.json, one or more folds) and a folder of scans; no
labels and none of the model's training data. In the output folder ``OUT`` it makes nnU-Net's three
folders and, in order (each step is skipped when a previous call finished it):

1. ``OUT/nnUNet_raw/DatasetXXX_Name``: the scans and the model's (fold-ensemble) segmentations of them,
   by :mod:`recokd.nnunet.pseudo_label` (nnU-Net's predictor);
2. ``OUT/nnUNet_preprocessed/DatasetXXX_Name``: the model's own plans and dataset.json, and the scans
   preprocessed with them by nnU-Net (``nnUNetv2_preprocess``, in a subprocess with ``OUT``'s folders);
3. ``OUT/nnUNet_results/DatasetXXX_Name/nnUNetTrainerReCoKD__<plans>_recokd_t<t>__<configuration>/fold_<f>``:
   the student, by ``recokd train ... --label-free --teacher MODEL --teacher-folds ...`` (same
   subprocess environment): no label loss, KD from the teacher on every patch, the segmentations only
   steering nnU-Net's foreground sampling and validation. nnU-Net's 5-fold split of the scans holds out
   a fifth of them; its per-epoch pseudo Dice and the final validation Dice there measure the student's
   agreement with the teacher (``checkpoint_best`` is chosen on it).

``OUT/recokd_distil.json`` records the request; ``--c`` continues a run only for the same request.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recokd.errors import UserError
from recokd.json_files import json_ready, read_json, write_json_atomic
from recokd.nnunet.layout import (
    KD_TRAINER,
    NNUNET_FOLDER_VARS,
    fold_folder_name,
    model_folder,
    parse_dataset_folder_name,
)

#: the request file in the output folder
REQUEST_FILE = "recokd_distil.json"
#: marks the finished preprocessing step
PREPROCESSED_MARK = ".recokd_preprocessed"
#: nnU-Net's 5-fold split needs at least this many scans
MIN_SCANS = 5


@dataclass
class DistilRequest:
    """A checked ``recokd distil`` call; nothing has been written yet."""

    model: Any  #: :class:`recokd.nnunet.model_folder.ModelFolder`
    pseudo_labels: Any  #: :class:`recokd.nnunet.pseudo_label.PseudoLabelPlan`
    out: Path
    fold: int
    t: int
    train_args: list[str] = field(default_factory=list)  #: KD / schedule flags for ``recokd train``

    @property
    def dataset_name(self) -> str:
        return self.pseudo_labels.target.name

    @property
    def student_plans(self) -> str:
        from recokd.nnunet.plans import student_plans_identifier

        return student_plans_identifier(self.model.plans_identifier, self.t)  # recokd train's --c-min default

    def folder(self, var: str) -> Path:
        """``OUT/<nnUNet_raw|nnUNet_preprocessed|nnUNet_results>``."""
        return self.out / var

    @property
    def trainer(self) -> str:
        """The KD trainer of ``train_args`` (``-tr``), else nnU-Net's augmenting one."""
        args = self.train_args
        return args[args.index("-tr") + 1] if "-tr" in args else KD_TRAINER

    def student_folder(self) -> Path:
        return model_folder(self.folder("nnUNet_results"), self.dataset_name, self.trainer,
                            self.student_plans, self.model.configuration) / fold_folder_name(self.fold)

    def record(self) -> dict[str, Any]:
        return json_ready({
            "model": str(self.model.folder.resolve()), "folds": list(self.model.folds),
            "scans": {c: [str(p.resolve()) for p in f] for c, f in self.pseudo_labels.scans.items()},
            "fold": self.fold, "t": self.t, "train_args": self.train_args,
            "mirroring": self.pseudo_labels.mirroring,
        })

    def env(self) -> dict[str, str]:
        """The environment of the steps run as subprocesses: ``OUT``'s nnU-Net folders."""
        env = dict(os.environ)
        env.update({var: str(self.folder(var)) for var in NNUNET_FOLDER_VARS})
        env.pop("RECOKD_SETTINGS", None)
        return env


def plan_distillation(model_folder_path: str | Path, scans: str | Path, out: str | Path, *, t: int,
                      folds=None, checkpoint: str, fold: int, train_args: list[str],
                      resume: bool, mirroring: bool = True) -> DistilRequest:
    """Check a ``recokd distil`` call (model folder, scans, output folder); write nothing."""
    from recokd.nnunet.pseudo_label import plan_pseudo_labels

    out = Path(out).expanduser().resolve()
    request_file = out / REQUEST_FILE
    if out.exists() and not resume:
        what = "a previous recokd distil run: pass --c to continue it" if request_file.is_file() else \
            "not made by recokd distil: choose a new output folder"
        raise UserError(f"-o {out} exists ({what})")
    if resume and not request_file.is_file():
        raise UserError(f"--c: {request_file} does not exist; nothing to continue in {out}")
    for source, what in ((Path(scans), "-i"), (Path(model_folder_path), "the model folder")):
        source = source.expanduser().resolve()
        if out == source or out in source.parents or source in out.parents:
            raise UserError(f"-o {out} overlaps {what} {source}: choose a separate output folder")
    if fold not in range(5):
        raise UserError(f"--fold must be one of nnU-Net's folds 0-4, got {fold}")
    from recokd.nnunet.model_folder import check_model_folder

    model = check_model_folder(model_folder_path, folds, checkpoint, role="teacher", what="-f")
    if len(model.folds) > 1 and "all" in model.folds:
        raise UserError(f"-f {' '.join(map(str, model.folds))}: fold_all cannot join an ensemble of numbered "
                        "folds (it was trained on all of their cases); give either")
    raw = out / "nnUNet_raw" / str(model.plans.get("dataset_name", ""))
    with warnings.catch_warnings():  # the user's nnU-Net folders may hold the teacher's dataset: no matter
        warnings.simplefilter("ignore", UserWarning)
        # on --c a finished raw dataset is kept (run_distillation skips the step): the plan only checks
        plan = plan_pseudo_labels(model, scans, raw, overwrite=resume, mirroring=mirroring)
    if len(plan.scans) < MIN_SCANS:
        raise UserError(f"-i {scans}: {len(plan.scans)} scan(s); label-free distillation needs at least "
                        f"{MIN_SCANS} (nnU-Net's 5-fold split holds a fifth out to measure agreement)")
    request = DistilRequest(model, plan, out, fold, t, list(train_args))
    if resume:
        saved = read_json(request_file, "distil request")
        if saved != request.record():
            changed = sorted(k for k in request.record() if saved.get(k) != request.record()[k])
            raise UserError(f"--c: {request_file} records another request (differs in: {', '.join(changed)});"
                            " continue with the same arguments or choose a new output folder")
    return request


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    print(f"[{what}] {shlex.join(command)}", flush=True)
    if subprocess.run(command, env=env, check=False).returncode != 0:
        raise UserError(f"{what} failed (command above); fix the cause and continue with --c")


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def run_distillation(request: DistilRequest, device: str) -> dict[str, Any]:
    """Run the three steps of the module docstring (skipping finished ones); returns the agreement summary."""
    from recokd.nnunet.pseudo_label import write_pseudo_label_dataset

    out, model = request.out, request.model
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / REQUEST_FILE, request.record(), indent=2)
    for var in NNUNET_FOLDER_VARS:
        request.folder(var).mkdir(exist_ok=True)
    raw = request.pseudo_labels.target
    if not (raw / "dataset.json").is_file():
        write_pseudo_label_dataset(request.pseudo_labels, device)
    else:
        print(f"[pseudo-labels] {raw} is complete")

    pre = request.folder("nnUNet_preprocessed") / request.dataset_name
    if not (pre / PREPROCESSED_MARK).is_file():
        pre.mkdir(parents=True, exist_ok=True)
        write_json_atomic(pre / f"{model.plans_identifier}.json", model.plans, indent=4)
        shutil.copyfile(raw / "dataset.json", pre / "dataset.json")  # as nnU-Net's planner leaves it
        dataset_id = parse_dataset_folder_name(request.dataset_name)[0]
        fingerprint = model.folder / "dataset_fingerprint.json"  # nnU-Net's trainer copies it to its results
        if fingerprint.is_file():
            shutil.copyfile(fingerprint, pre / fingerprint.name)
        else:  # the scans' own fingerprint then (a record only: the model's plans decide the preprocessing)
            _run(_python("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints "
                         "import extract_fingerprint_entry; sys.argv[0] = 'nnUNetv2_extract_fingerprint'; "
                         "extract_fingerprint_entry()", "-d", str(dataset_id), "-np", "1"),
                 {**request.env(), "nnUNet_n_proc_DA": "1"}, "fingerprint")
        _run(_python("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
                     "preprocess_entry; sys.argv[0] = 'nnUNetv2_preprocess'; preprocess_entry()",
                     "-d", str(dataset_id), "-plans_name", model.plans_identifier, "-c", model.configuration,
                     "-np", "1"),
             {**request.env(), "nnUNet_n_proc_DA": "1"}, "preprocessing")
        (pre / PREPROCESSED_MARK).write_text("done\n")
    else:
        print(f"[preprocessing] {pre} is complete")

    student = request.student_folder()
    if not (student / "checkpoint_final.pth").is_file():
        folds = ["--teacher-fold", str(model.folds[0])] if len(model.folds) == 1 else \
            ["--teacher-folds", ",".join(map(str, model.folds))]
        train = ["train", request.dataset_name, model.configuration, str(request.fold),
                 "--teacher", str(model.folder.resolve()), *folds, "--teacher-checkpoint",
                 model.checkpoint_name, "-t", str(request.t), "-p", model.plans_identifier, "--label-free",
                 *request.train_args, "--device", device]
        if any(student.glob("checkpoint_*.pth")):
            train.append("--c")
        _run(_python("import sys; from recokd.cli import main; sys.exit(main(sys.argv[1:]))", *train),
             request.env(), "training")
    else:
        print(f"[training] {student / 'checkpoint_final.pth'} exists")
    return agreement_summary(student)


def agreement_summary(fold: Path) -> dict[str, Any]:
    """The student's agreement with the teacher, from nnU-Net's own records of the fold:
    ``per_epoch`` (the pseudo Dice of each epoch's validation patches, mean over classes) and ``final``
    (the final validation's mean Dice of student vs teacher segmentations of the held-out scans, with
    its per-class values and the number of scans)."""
    import torch

    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    per_epoch = [float(v) for v in checkpoint["logging"].get("mean_fg_dice", [])]
    summary = read_json(fold / "validation" / "summary.json", "nnU-Net validation summary")
    per_class = {k: float(v["Dice"]) for k, v in summary.get("mean", {}).items()}
    return {"per_epoch": per_epoch, "final": float(summary["foreground_mean"]["Dice"]),
            "per_class": per_class, "held_out_scans": len(summary.get("metric_per_case", []))}
