"""A first look at distillation beyond the labels on phantoms (issue 26's closing figures; one seed).

Four t=3 students, the same schedule, the same teacher, the same 16 held-out test phantoms (Dice against
their hidden ground truth):

- ``labelled``: stock nnU-Net on 9 labelled cases (nnU-Net's fold 0 of the first 12 phantoms);
- ``unlabelled``: the same 9 cases + the other 48 training phantoms as unlabelled scans
  (``recokd train --unlabelled``, ``reco+logits``, half of every batch unlabelled);
- ``label-free``: all 60 training phantoms without any label (``recokd distil``, fold 0 of its split);
- ``pseudo``: stock nnU-Net on the 9 labelled cases + the teacher's segmentations of the 48 others
  (``recokd pseudo-label``; the labelled cases' validation split kept);
- ``unlabelled-logits`` and ``label-free-logits``: the same two KD students with soft targets alone
  (``--method logits``, temperature 2) instead of ``reco+logits``;
- ``unlabelled-pll-logits`` / ``unlabelled-pll-reco``: the ``unlabelled`` student with
  ``--pseudo-label-loss`` (nnU-Net's Dice+CE on the teacher's online hard labels of the unlabelled
  patches) and soft targets at weight 1 / ``reco+logits`` at weight 0.1.

Teacher: stock nnU-Net (SGD, no augmentation) for ``TEACHER_EPOCHS`` x 50 iterations on the 60 phantoms.
Students: nnU-Net's AdamW, no augmentation, ``STUDENT_EPOCHS`` x 50 iterations, seed 0; KD weight 1,
constant (not swept: the sweep belongs to the evidence study). Every step is skipped when its output
exists, so running the file again resumes; the heavy folders stay out of git, ``results.json`` and
``results.md`` are committed.

    python benchmarks/unlabelled_first_look.py [--out DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATASET, LABELLED, PSEUDO = 821, 822, 823
NAMES = {DATASET: "Dataset821_P32s2Unl", LABELLED: "Dataset822_P32s2UnlFew",
         PSEUDO: "Dataset823_P32s2UnlPseudo"}
FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
CONFIG = "3d_fullres"
#: the KD students' methods: results-key suffix -> method (each at weight 1, constant, not swept)
KD_VARIANTS = {"": ("reco+logits", "1", []), "-logits": ("logits", "1", []),
               # + nnU-Net's Dice+CE on the teacher's online hard labels of the unlabelled patches
               "-pll-logits": ("logits", "1", ["--pseudo-label-loss"]),
               "-pll-reco": ("reco+logits", "0.1", ["--pseudo-label-loss"])}


def run(command: list[str], env: dict[str, str], **extra: str) -> None:
    shown = " ".join(f"{k}={v}" for k, v in extra.items())
    print(f"+ {shown + ' ' if shown else ''}{shlex.join(command)}", flush=True)
    subprocess.run(command, env={**env, **extra}, check=True)


def recokd(*args: str) -> list[str]:
    return [str(BIN / "recokd"), *args]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/unlabelled-first-look")
    p.add_argument("--tiny", action="store_true", help="every count at its minimum (figures mean nothing)")
    args = p.parse_args(argv)
    tiny = args.tiny
    cases, test_cases, few = (10, 2, 6) if tiny else (60, 16, 12)
    teacher_epochs, student_epochs, iters = (1, 1, 2) if tiny else (20, 20, 50)
    out = args.out.resolve()
    data = out / "data"
    env = dict(os.environ)
    env.update(nnUNet_raw=str(data / "nnUNet_raw"), nnUNet_preprocessed=str(data / "nnUNet_preprocessed"),
               nnUNet_results=str(data / "nnUNet_results"), nnUNet_def_n_proc="1", nnUNet_compile="0",
               nnUNet_wandb_enabled="0", PYTHONWARNINGS="ignore::FutureWarning")
    env["nnUNet_extTrainer"] = subprocess.run(
        [sys.executable, "-c", "import recokd.nnunet as n; print(n.ext_trainer_dir())"],
        capture_output=True, text=True, check=True).stdout.strip()
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("data/\n")
    raw, pre, res = (Path(env[k]) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
    full = raw / NAMES[DATASET]
    train_env = {**env, "nnUNet_n_proc_DA": "0"}
    short = {"RECOKD_SHORT_ITERS": str(iters), "RECOKD_SHORT_VAL_ITERS": "2", "RECOKD_SEED": "0"}

    # data and teacher
    if not full.is_dir():
        run(recokd("phantoms", "--id", str(DATASET), "--name", "P32s2Unl", "--cases", str(cases),
                   "--test-cases", str(test_cases), "--shape", "32", "32", "32", "--small-scale", "2",
                   "--seed", "0", "--raw", str(raw)), env)
    if not (pre / NAMES[DATASET] / "nnUNetPlans.json").is_file():
        run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET), "-c", CONFIG, "-np", "1"], env)
    teacher = res / NAMES[DATASET] / f"nnUNetTrainerShortNoDA__nnUNetPlans__{CONFIG}"
    if not (teacher / "fold_0/checkpoint_final.pth").is_file():
        run([str(BIN / "nnUNetv2_train"), str(DATASET), CONFIG, "0", "-tr", "nnUNetTrainerShortNoDA",
             "-device", "cpu"], train_env, RECOKD_SHORT_EPOCHS=str(teacher_epochs), **short)

    # the labelled subset (first `few` phantoms) and the unlabelled scans (the others' images)
    labels = sorted((full / "labelsTr").glob("*.nii.gz"))
    ids = [f.name[:-len(".nii.gz")] for f in labels]
    unlabelled, all_scans = out / "data/unlabelled", out / "data/all_scans"
    if not unlabelled.is_dir():
        for folder, chosen in ((unlabelled, ids[few:]), (all_scans, ids)):
            folder.mkdir(parents=True)
            for case in chosen:
                shutil.copy(full / "imagesTr" / f"{case}_0000.nii.gz", folder)
    few_raw = raw / NAMES[LABELLED]
    if not few_raw.is_dir():
        (few_raw / "imagesTr").mkdir(parents=True)
        (few_raw / "labelsTr").mkdir()
        for case in ids[:few]:
            shutil.copy(full / "imagesTr" / f"{case}_0000.nii.gz", few_raw / "imagesTr")
            shutil.copy(full / "labelsTr" / f"{case}.nii.gz", few_raw / "labelsTr")
        ds = json.loads((full / "dataset.json").read_text())
        ds.update(numTraining=few, name="P32s2UnlFew")
        (few_raw / "dataset.json").write_text(json.dumps(ds, indent=2))
    prepare_with_teacher_plans(LABELLED, few_raw, env)

    results: dict[str, Path] = {}
    adam = {"RECOKD_SHORT_OPTIMIZER": "adam", "RECOKD_SHORT_EPOCHS": str(student_epochs)}
    sched = ["--epochs", str(student_epochs), "--iters-per-epoch", str(iters), "--val-iters", "2",
             "--optimizer", "adam", "--seed", "0", "--device", "cpu"]

    def stock_student(dataset_id: int) -> Path:
        """The t=3 student of ``dataset_id`` trained by stock nnU-Net (AdamW, seed 0); its model folder."""
        run(recokd("student-plans", str(dataset_id), "-c", CONFIG, "-t", "3"), env)
        folder = res / NAMES[dataset_id] / f"nnUNetTrainerShortNoDA__nnUNetPlans_recokd_t3__{CONFIG}"
        if not (folder / "fold_0/checkpoint_final.pth").is_file():
            run([str(BIN / "nnUNetv2_train"), str(dataset_id), CONFIG, "0", "-tr", "nnUNetTrainerShortNoDA",
                 "-p", "nnUNetPlans_recokd_t3", "-device", "cpu"], train_env, **short, **adam)
        return folder

    results["labelled"] = stock_student(LABELLED)

    # labelled + unlabelled scans, and label-free (every training phantom, no label); each KD method in
    # its own results folder (the same trainer, plans and fold)
    envs: dict[str, dict[str, str]] = {}
    for suffix, (method, weight, extra) in KD_VARIANTS.items():
        kd = ["-t", "3", "--method", method, "--kd-weight", weight, "--schedule", "constant", "--warmup", "0",
              *extra]
        kd_res = res if not suffix else data / f"nnUNet_results{suffix}"
        folder = kd_res / NAMES[LABELLED] / f"nnUNetTrainerReCoKDNoDA__nnUNetPlans_recokd_t3__{CONFIG}"
        if not (folder / "fold_0/checkpoint_final.pth").is_file():
            resume = ["--c"] if any((folder / "fold_0").glob("checkpoint_*.pth")) else []
            run(recokd("train", str(LABELLED), CONFIG, "0", "--teacher", str(teacher), "--unlabelled",
                       str(unlabelled), "-tr", "nnUNetTrainerReCoKDNoDA", *kd, *sched, *resume),
                train_env, nnUNet_results=str(kd_res))
        results[f"unlabelled{suffix}"] = folder
        envs[f"unlabelled{suffix}"] = {**env, "nnUNet_results": str(kd_res)}

        if extra:  # recokd distil has no such options: the label-free student is not repeated
            continue
        distil_out = out / f"data/distil{suffix}"
        student = distil_out / "nnUNet_results" / NAMES[DATASET] / \
            f"nnUNetTrainerReCoKDNoDA__nnUNetPlans_recokd_t3__{CONFIG}"
        if not (student / "fold_0/checkpoint_final.pth").is_file():
            resume = ["--c"] if distil_out.exists() else []
            run(recokd("distil", str(teacher), "-i", str(all_scans), "-o", str(distil_out), "-tr",
                       "nnUNetTrainerReCoKDNoDA", "--disable-tta", "-t", "3", "--method", method,
                       "--kd-weight", weight, *sched, *resume), train_env)
        results[f"label-free{suffix}"] = student
        envs[f"label-free{suffix}"] = {**env, **{k: str(distil_out / k) for k in FOLDERS}}

    # hard pseudo-labels of the unlabelled scans + the labelled cases, the labelled validation split kept
    pseudo_raw = raw / NAMES[PSEUDO]
    if not pseudo_raw.is_dir():
        run(recokd("pseudo-label", str(teacher), "-i", str(unlabelled), "-o", str(pseudo_raw), "--labelled",
                   str(few_raw), "--disable-tta", "--device", "cpu"), env)
    prepare_with_teacher_plans(PSEUDO, pseudo_raw, env)
    split = json.loads((pre / NAMES[LABELLED] / "splits_final.json").read_text())[0]
    pseudo_split = pre / NAMES[PSEUDO] / "splits_final.json"
    if not pseudo_split.is_file():
        pseudo_split.write_text(json.dumps([{"train": split["train"] + ids[few:], "val": split["val"]}]))
    results["pseudo"] = stock_student(PSEUDO)

    # predict the test phantoms with each, evaluate against the hidden labels
    table: dict[str, dict] = {}
    models = {"teacher": teacher, **results}
    for name, model in models.items():
        predictions = out / "data/predictions" / name
        summary = predictions / "recokd_eval/summary.json"
        if not summary.is_file():
            shutil.rmtree(predictions, ignore_errors=True)
            parts = model.name.split("__")
            model_env = envs.get(name, env)
            run(recokd("predict", "-i", str(full / "imagesTs"), "-o", str(predictions), "-d",
                       model.parent.name, "-c", CONFIG, "-f", "0", "-tr", parts[0], "-p", parts[1],
                       "--device", "cpu"), model_env)
            run(recokd("evaluate", str(predictions), str(full / "labelsTs"), "--dataset-json",
                       str(full / "dataset.json")), env)
        table[name] = json.loads(summary.read_text())
    write_report(out, table, teacher_epochs, student_epochs, iters, (len(split["train"]), len(split["val"])),
                 cases, test_cases)
    return 0


def prepare_with_teacher_plans(dataset_id: int, raw_folder: Path, env: dict[str, str]) -> None:
    """The teacher's plans moved to ``dataset_id`` and its cases preprocessed with them (as regime 3)."""
    pre = Path(env["nnUNet_preprocessed"]) / NAMES[dataset_id]
    if (pre / "nnUNetPlans_3d_fullres").is_dir() and any((pre / "nnUNetPlans_3d_fullres").iterdir()):
        return
    run([str(BIN / "nnUNetv2_extract_fingerprint"), "-d", str(dataset_id), "-np", "1"], env)
    run([str(BIN / "nnUNetv2_move_plans_between_datasets"), "-s", str(DATASET), "-t", str(dataset_id), "-sp",
         "nnUNetPlans", "-tp", "nnUNetPlans"], env)
    shutil.copy(raw_folder / "dataset.json", pre / "dataset.json")  # as nnU-Net's planner does
    run([str(BIN / "nnUNetv2_preprocess"), "-d", str(dataset_id), "-plans_name", "nnUNetPlans", "-c", CONFIG,
         "-np", "1"], env)


def write_report(out: Path, table: dict[str, dict], teacher_epochs: int, student_epochs: int, iters: int,
                 split: tuple[int, int], cases: int, test_cases: int) -> None:
    """results.json (each model's evaluation summary) and results.md (the table)."""
    rows = {name: (float(ev["foreground_mean"]["dice"]), float(ev["groups"]["small"]["dice"]))
            for name, ev in table.items()}
    t_dice, l_dice = rows["teacher"][0], rows["labelled"][0]
    lines = [
        "# Distillation beyond the labels: a first look (one seed, phantoms)\n",
        f"Teacher: stock nnU-Net, SGD, no augmentation, {teacher_epochs} x {iters} iterations on {cases} "
        f"labelled phantoms. Students t=3, nnU-Net's AdamW, no augmentation, {student_epochs} x {iters} "
        f"iterations, seed 0; KD reco+logits at weight 1, constant (not swept); rows '-logits': --method "
        f"logits (soft targets alone, T=2), the same weight; rows '-pll-': --pseudo-label-loss, logits at "
        f"weight 1 / reco+logits at 0.1. {sum(split)} labelled "
        f"phantoms (nnU-Net fold 0: {split[0]} train / {split[1]} validation), {cases - sum(split)} "
        "unlabelled. "
        f"Dice on the {test_cases} held-out test phantoms against their ground truth.\n",
        "| model | mean Dice | small-structure Dice | gap closed vs labelled-only |",
        "|---|---:|---:|---:|",
    ]
    for name, (dice, small) in rows.items():
        gap = "" if name in ("teacher", "labelled") else f"{(dice - l_dice) / (t_dice - l_dice):+.0%}"
        lines.append(f"| {name} | {dice:.3f} | {small:.3f} | {gap} |")
    lines.append(f"\nCommand: `python benchmarks/unlabelled_first_look.py` (resumes; {out.name}/data is not "
                 "committed).")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    keep = ("per_class", "foreground_mean", "groups", "num_cases")
    (out / "results.json").write_text(json.dumps({k: {f: v[f] for f in keep} for k, v in table.items()},
                                                 indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
