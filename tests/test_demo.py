"""``recokd demo``: the whole workflow end to end on tiny settings (in a fresh process, since
nnU-Net reads its folder variables at import time), and its refusal to replace an output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recokd.cli import main

RECOKD = Path(sys.executable).parent / "recokd"


def test_demo_refuses_a_non_empty_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "mine.txt").write_text("user data")
    assert main(["demo", "-o", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "user data"
    assert main(["demo", "-o", str(tmp_path / "new"), "--cases", "4"]) == 2
    assert "--cases >= 5" in capsys.readouterr().err
    # --labelled-cases: >= 5 labelled cases and >= 1 unlabelled scan
    for cases, labelled in (("8", "4"), ("8", "8")):
        argv = ["demo", "-o", str(tmp_path / "new"), "--cases", cases, "--labelled-cases", labelled]
        assert main(argv) == 2
        assert "--labelled-cases must be >= 5" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    # a teacher to reuse is checked before anything is written
    assert main(["demo", "-o", str(tmp_path / "new"), "--teacher", str(tmp_path)]) == 2
    assert "expected an nnU-Net results folder" in capsys.readouterr().err
    model = tmp_path / "Dataset990_DemoPhantoms" / "nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    assert main(["demo", "-o", str(tmp_path / "new"), "--teacher", str(model)]) == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and "fold_0/checkpoint_final.pth" in err and "missing" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_end_to_end_on_tiny_settings(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    cmd = [str(RECOKD), "demo", "-o", str(out), "--cases", "6", "--test-cases", "1", "--teacher-epochs", "1",
           "--student-epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--threads", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=850, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # the terminal shows the bench's run lines, the training progress bars and the table; nnU-Net's own
    # logs go to each run's run.log
    assert "[3/3] t2 reco seed 0: done" in proc.stdout and "Epoch time" not in proc.stdout
    assert "t2 nokd seed 0" in proc.stderr  # the no-KD student's progress bar
    assert "Epoch time" in (out / "teacher" / "run.log").read_text()
    for run in ("nokd", "reco"):
        assert "Epoch time" in (out / "runs" / "t2" / run / "seed0" / "run.log").read_text(), run
    result = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in result["table"]["rows"]}
    assert list(rows) == ["teacher", "student, no KD", "student, ReCo-KD"]
    assert rows["student, no KD"]["parameters"] == rows["student, ReCo-KD"]["parameters"]
    assert rows["teacher"]["parameters"] > 10 * rows["student, ReCo-KD"]["parameters"]
    assert all(r["cpu_latency_s"] > 0 for r in rows.values())
    assert all(0.0 <= r["mean_dice"] <= 1.0 for r in rows.values())
    _assert_gaps(rows, "student, no KD")
    assert "(student - no KD) / (teacher - no KD)" in proc.stdout
    for name in ("results.md", "bench_results.md", "bench_config.json", "dice_vs_latency.png"):
        assert (out / name).is_file(), name
    assert "| reco | 2 | 1 |" in (out / "bench_results.md").read_text()
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "teacher/predictions", "teacher/evaluation"):
        assert (out / folder).is_dir(), folder

    # the same command again resumes the finished demo: nothing is trained twice, the table is the same
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=850, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count(": skip (done)") == 3 and "resuming the demo" in proc.stdout
    assert json.loads((out / "results.json").read_text())["table"] == result["table"]

    # a second demo reusing that teacher trains only the students: here few labels and unlabelled scans
    teacher = out / "teacher" / "nnUNet_results" / "Dataset990_DemoPhantoms" / (
        "nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres")
    again = tmp_path / "again"
    few_labels = [*cmd[:3], str(again), *cmd[4:], "--teacher", str(teacher), "--labelled-cases", "5"]
    proc = subprocess.run(few_labels, capture_output=True, text=True, timeout=850, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "reusing the teacher" in proc.stdout and "training the teacher" not in proc.stdout
    assert not (again / "teacher" / "nnUNet_results").exists()  # predicted from where it lies
    assert "[4/4] t2 reco:100+logits seed 0: done" in proc.stdout
    rerun = {r["model"]: r for r in json.loads((again / "results.json").read_text())["table"]["rows"]}
    assert rerun["teacher"]["mean_dice"] == rows["teacher"]["mean_dice"]  # the same model, the same data
    students = ["student, labels only", "student, pseudo-labels", "student, ReCo-KD"]
    assert list(rerun) == ["teacher", *students]
    assert len({rerun[s]["parameters"] for s in students}) == 1
    _assert_gaps(rerun, "student, labels only")
    # the KD run saw the unlabelled scan with the pseudo-label loss; the pseudo-label student trained stock
    argv = json.loads((again / "runs/t2/reco:100+logits/seed0/job.json").read_text())["train"]["argv"]
    assert "--unlabelled" in argv and "--pseudo-label-loss" in argv, argv
    assert "Epoch time" in (again / "runs/t2/pseudo/seed0/run.log").read_text()
    assert "labelled cases: 5 of 6" in proc.stdout


def _assert_gaps(rows: dict[str, dict], nokd: str) -> None:
    """The gap recovered: each student but the one without KD has it, computed from the table's Dice."""
    teacher, base = rows["teacher"]["mean_dice"], rows[nokd]["mean_dice"]
    for name, row in rows.items():
        if name in ("teacher", nokd) or teacher <= base:
            assert row["gap_recovered_dice"] is None, name
        else:
            assert row["gap_recovered_dice"] == pytest.approx((row["mean_dice"] - base) / (teacher - base))
