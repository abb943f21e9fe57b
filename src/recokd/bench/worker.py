"""The subprocess side of ``recokd bench``: one job (a JSON file written by the runner) per process.

nnU-Net reads its folders and process counts from the environment, some of them at import
time, so every training run gets a fresh interpreter with its own ``nnUNet_results``; the runner
sets the environment, this module only does the work:

- ``prepare``: write the phantom dataset and plan/preprocess it with nnU-Net (``--phantoms``);
- ``run``: seed ``random``/numpy/torch, train (``recokd train`` for KD methods, stock nnU-Net
  ``run_training`` with ``nnUNetTrainerShort`` for the teacher and the no-KD students) unless the
  fold already holds ``checkpoint_final.pth``, predict the test images (``recokd predict``),
  evaluate them (:func:`recokd.evaluation.evaluate.evaluate_folders`), score a student's against the
  teacher's predictions (:mod:`recokd.bench.agreement`) and write ``result.json`` last (its presence
  marks the run as finished);
- ``profile``: :func:`recokd.evaluation.profile.profile_model` of one architecture;
- ``unlabelled`` (``--labelled-cases``): the unlabelled scans preprocessed for the KD runs, and in a
  ``pseudo`` run's job (and, label-free, ``--labelled-cases 0``, in every student's), before its seeding
  and training, the pseudo-label dataset (:mod:`recokd.bench.pseudo`).

Started as ``python -c "from recokd.bench.worker import main; ..." JOB.json`` (see :func:`command`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from recokd.errors import UserError
from recokd.json_files import write_json_atomic
from recokd.nnunet.layout import CHECKPOINT_FINAL, CHECKPOINT_LATEST, CPU_THREADS_ENV, SHORT_ENV
from recokd.nnunet.settings import SETTINGS_FILE


def command(job_file: Path) -> list[str]:
    """The command line that runs ``job_file`` in a fresh interpreter (this Python)."""
    code = "import sys; from recokd.bench.worker import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, str(job_file)]


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also every CUDA device


def _cli(argv: list[str]) -> None:
    from recokd.cli import main as recokd_main

    print(f"$ recokd {' '.join(argv)}", flush=True)
    rc = recokd_main(argv)
    if rc != 0:
        raise UserError(f"`recokd {argv[0]}` failed with exit code {rc} (see the messages above)")


# ---------------------------------------------------------------------------- jobs


def _prepare(job: dict[str, Any]) -> None:
    from recokd.data.phantoms import write_phantom_dataset
    from recokd.nnunet.preprocess import plan_and_preprocess

    spec = job["phantoms"]
    pre = Path(job["preprocessed_folder"])
    if pre.exists():  # left over by an interrupted preparation
        shutil.rmtree(pre)
    folder = write_phantom_dataset(
        job["dataset_id"],
        num_cases=spec["cases"],
        num_test_cases=spec["test_cases"],
        seed=spec["seed"],
        shape=tuple(spec["shape"]),
        small_scale=float(spec.get("small_scale", 1.0)),
        name=job["dataset_name"],
        raw_dir=job["raw_root"],
        overwrite=True,
    )
    print(f"wrote {folder}", flush=True)
    plan_and_preprocess(job["dataset_id"], job["configuration"])
    write_json_atomic(Path(job["marker"]), {"dataset": folder.name, "phantoms": spec})


def _train(job: dict[str, Any]) -> bool:
    """Train unless the fold holds checkpoint_final.pth; a fold with ``checkpoint_latest.pth`` (a run stopped
    mid-training, e.g. by a scheduler's time limit) continues from it (nnU-Net's ``--c``), any other
    unfinished fold is started over. Returns whether it trained."""
    train = job["train"]
    fold = Path(job["fold_folder"])
    if train is None:
        return False
    if (fold / CHECKPOINT_FINAL).is_file():
        print(f"{fold / CHECKPOINT_FINAL} exists: training finished earlier, not repeated", flush=True)
        return False
    resume = (fold / CHECKPOINT_LATEST).is_file() and (
        train["type"] != "recokd" or (fold / SETTINGS_FILE).is_file()
    )
    restart = fold.exists() and not resume
    if resume:
        print(f"{fold} holds an unfinished training: continuing it from {CHECKPOINT_LATEST}", flush=True)
    elif restart:
        print(f"{fold} holds an unfinished training: starting it over", flush=True)
    if train["type"] == "recokd":
        _cli([*train["argv"], *(["--c"] if resume else ["--overwrite"] if restart else [])])
    else:
        import torch
        from nnunetv2.run.run_training import run_training

        from recokd.nnunet.devices import set_nnunet_threads

        # nnU-Net's entry point sets the threads, run_training does not: without this a run of `--jobs N` on
        # a CPU would take torch's default (every core) instead of its share
        set_nnunet_threads(torch.device(train["device"]))
        if restart:
            shutil.rmtree(fold)
        print(
            f"$ run_training {train['dataset']} {train['configuration']} {train['fold']} "
            f"{train['trainer']} {train['plans']}{' --c' if resume else ''} "
            f"({', '.join(f'{name}={os.environ.get(name)}' for name in SHORT_ENV)})",
            flush=True,
        )
        fold_value: int | str = train["fold"] if train["fold"] == "all" else int(train["fold"])
        run_training(
            train["dataset"],
            train["configuration"],
            fold_value,
            train["trainer"],
            train["plans"],
            continue_training=resume,
            device=torch.device(train["device"]),
        )
    if not (fold / CHECKPOINT_FINAL).is_file():
        raise UserError(f"training ended without {fold / CHECKPOINT_FINAL}")
    return True


def _run(job: dict[str, Any]) -> None:
    from recokd.evaluation.evaluate import evaluate_folders

    started = time.perf_counter()
    if job.get("pseudo") is not None:  # made by the first run that needs it: before the seeding, so that
        from recokd.bench.pseudo import ensure_pseudo_dataset  # every run of a seed starts from one state

        ensure_pseudo_dataset(job["pseudo"])
    seed = job.get("seed")
    if seed is not None:
        seed_everything(int(seed))
    trained = _train(job)
    train_s = time.perf_counter() - started

    t0 = time.perf_counter()
    _cli(job["predict_argv"])
    predict_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    groups = job.get("class_groups")
    result = evaluate_folders(
        job["predictions"],
        job["test_labels"],
        dataset_json=job.get("dataset_json"),
        class_groups=groups,
        out_dir=job["evaluation"],
        overwrite=True,
    )
    summary = result.summary()
    evaluate_s = time.perf_counter() - t0
    print(
        f"mean foreground Dice {summary['foreground_mean']['dice']:.4f} over {len(result.cases)} case(s)",
        flush=True,
    )
    teacher_predictions = job.get("teacher_predictions")
    if teacher_predictions and Path(teacher_predictions).is_dir():
        from recokd.bench.agreement import write_agreement

        agreement = write_agreement(
            job["predictions"], teacher_predictions, job["agreement"], dataset_json=job.get("dataset_json"),
            class_groups=groups,
        )
        print(f"agreement with the teacher (Dice against its segmentations): {agreement:.4f}", flush=True)
    write_json_atomic(
        Path(job["result"]),
        {
            **job["record"],
            "trained": trained,
            "train_s": train_s if trained else None,
            "predict_s": predict_s,
            "evaluate_s": evaluate_s,
            "wall_s": time.perf_counter() - started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model_folder": str(Path(job["fold_folder"]).parent),
            "evaluation": str(job["evaluation"]),
        },
    )


def _profile(job: dict[str, Any]) -> None:
    from dataclasses import asdict

    from recokd.evaluation.profile import ModelSpec, ProfileSettings, environment, profile_model

    fold: int | str = job["fold"] if job["fold"] == "all" else int(job["fold"])
    settings = ProfileSettings(
        device="cpu",
        threads=job.get("threads"),
        repeats=int(job["repeats"]),
        mirroring=("off",),
        case_files=tuple(job["case_files"]) if job["case_files"] else None,
        fold=fold,
        isolate=False,
    )
    profile = profile_model(ModelSpec(job["model"], job["label"]), settings)
    timing = profile.timings["off"]
    print(
        f"{job['label']}: {profile.parameters:,} parameters, {profile.flops_per_patch / 1e9:.2f} GFLOPs per "
        f"patch, {timing.median_s:.3f} s per volume (CPU, {profile.threads} threads)",
        flush=True,
    )
    write_json_atomic(
        Path(job["out"]),
        {
            "label": job["label"],
            "parameters": profile.parameters,
            "flops_per_patch": profile.flops_per_patch,
            "latency_s": timing.median_s,
            "profile": asdict(profile),
            "settings": asdict(settings),
            "environment": environment(),
        },
    )


def _unlabelled(job: dict[str, Any]) -> None:
    from recokd.bench.pseudo import preprocess_scans

    preprocess_scans(job)
    write_json_atomic(Path(job["marker"]), {"plans": job["plans"]})


JOBS = {"prepare": _prepare, "run": _run, "profile": _profile, "unlabelled": _unlabelled}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    print(
        f"=== {job['kind']} job {argv[0]} (pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}, "
        f"{CPU_THREADS_ENV}={os.environ.get(CPU_THREADS_ENV, '')})",
        flush=True,
    )
    try:
        JOBS[job["kind"]](job)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0
