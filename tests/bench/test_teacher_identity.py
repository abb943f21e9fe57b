"""A bench records the weights of the teacher its runs distil and refuses, before any run starts, to go on
with another one (a teacher re-trained by the same recipe on a new machine); dropping the optimiser state
is the same teacher, and ``--rerun`` starts the record over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recokd.bench.config import RESULT_FILE, TEACHER, RunSpec, Selection, Study
from recokd.bench.runner import BenchRunner, Layout
from recokd.bench.teacher_identity import TEACHER_WEIGHTS_FILE, check_teacher_identity
from recokd.errors import UserError
from recokd.nnunet.trained_model import drop_training_state, weights_digest

DATASET = "Dataset991_BenchPhantoms"


def _checkpoint(path: Path, seed: int) -> Path:
    """An nnU-Net-shaped checkpoint, optimiser state included, whose weights depend on ``seed`` only."""
    g = torch.Generator().manual_seed(seed)
    ckpt = {
        "network_weights": {"conv.weight": torch.randn(4, 1, 3, 3, 3, generator=g),
                            "conv.bias": torch.zeros(4)},
        "init_args": {"plans": {}, "configuration": "3d_fullres", "dataset_json": {}},
        "trainer_name": "nnUNetTrainer",
        "optimizer_state": {"state": {0: torch.ones(3)}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def test_recorded_then_compared(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    out.mkdir()
    ckpt = tmp_path / "teacher/fold_0/checkpoint_final.pth"
    assert check_teacher_identity(out, ckpt) is None  # not trained yet: nothing to record
    assert not (out / TEACHER_WEIGHTS_FILE).exists()

    _checkpoint(ckpt, seed=0)
    line = check_teacher_identity(out, ckpt, finished_runs=3)
    assert line is not None and "3 student run(s) finished before" in line
    record = json.loads((out / TEACHER_WEIGHTS_FILE).read_text())
    assert record["weights_sha256"] == weights_digest(ckpt) and record["checkpoint"] == str(ckpt)

    assert drop_training_state(ckpt)
    assert check_teacher_identity(out, ckpt) is None  # the same weights: accepted, nothing rewritten
    assert json.loads((out / TEACHER_WEIGHTS_FILE).read_text()) == record

    _checkpoint(ckpt, seed=1)  # re-trained: other weights
    with pytest.raises(UserError, match=r"is not the teacher this bench's runs distilled .*restore that"):
        check_teacher_identity(out, ckpt)

    (out / TEACHER_WEIGHTS_FILE).write_text("{}")
    with pytest.raises(UserError, match=f"{TEACHER_WEIGHTS_FILE} is not a readable teacher record"):
        check_teacher_identity(out, ckpt)


class _Recorder:
    """An executor that runs nothing and remembers what it was asked to run."""

    def __init__(self) -> None:
        self.calls: list[list[RunSpec]] = []

    def execute(self, runner: object, layout: Layout, specs: list[RunSpec]) -> None:
        self.calls.append(list(specs))


def _runner(
    tmp_path: Path, teacher: Path, executor: _Recorder, rerun: bool = False
) -> tuple[BenchRunner, Layout]:
    study = Study(dataset=DATASET, phantoms=None, teacher=str(teacher), teacher_epochs=None, epochs=1,
                  iters_per_epoch=1, val_iters=1, kd_weight=0.01)
    out = tmp_path / "out"
    runner = BenchRunner(out, study, Selection(["reco"], [2], [0]), progress=False, echo=lambda _: None,
                         executor=executor, rerun=rerun)  # type: ignore[arg-type]
    layout = Layout(out, DATASET, tmp_path / "raw", tmp_path / "pre", tmp_path / "imagesTs",
                    tmp_path / "labelsTs", teacher, {2: "nnUNetPlans_recokd_t2"})
    return runner, layout


def test_a_resumed_bench_refuses_another_teacher_before_any_run(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher_model"
    ckpt = _checkpoint(teacher / "fold_0/checkpoint_final.pth", seed=0)
    executor = _Recorder()
    runner, layout = _runner(tmp_path, teacher, executor)
    runner.run_all(layout)
    assert len(executor.calls) == 1 and (layout.out / TEACHER_WEIGHTS_FILE).is_file()
    done = RunSpec("nokd", 2, 0).folder(layout.out)
    done.mkdir(parents=True)
    (done / RESULT_FILE).write_text("{}")

    _checkpoint(ckpt, seed=1)  # the study's teacher step re-trained it on another machine
    with pytest.raises(UserError, match="is not the teacher"):
        _runner(tmp_path, teacher, executor)[0].run_all(layout)
    assert len(executor.calls) == 1  # nothing started

    rerun, _ = _runner(tmp_path, teacher, executor, rerun=True)
    rerun.run_all(layout)  # --rerun: every run again, with this teacher
    assert len(executor.calls) == 2 and not done.exists()
    assert TEACHER in [s.method for s in executor.calls[1]]
    record = json.loads((layout.out / TEACHER_WEIGHTS_FILE).read_text())
    assert record["weights_sha256"] == weights_digest(ckpt)
