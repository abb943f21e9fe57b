"""The command blocks the docs call exact run as written: ``benchmarks/RESULTS.md`` "Exact commands" (the
evidence study, ``recokd study benchmarks/studies/evidence.toml``: phantoms, planning, teacher, students,
curves, both sweeps, the final bench, int8 and the backend profile, regime 3's dataset and benches, the
longer teacher, then the by-hand predict / evaluate) on tiny settings (``--tiny``: 10 + 2 phantoms, 2
iterations per epoch, 1-2 epochs, one seed), in a temporary study folder (``--folder``).
The figures mean nothing; what is tested is that every command of the block still works and writes what
RESULTS.md says it writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_blocks import ROOT, code_blocks

pytestmark = pytest.mark.slow


@pytest.mark.timeout(3600)
def test_results_md_exact_commands_run_as_written(tmp_path: Path) -> None:
    (block,) = code_blocks("benchmarks/RESULTS.md", "## Exact commands", "bash")
    study, deploy = tmp_path / "evidence", tmp_path / "deploy"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(var, None)  # the block's own `eval "$(recokd study ... --env)"` must provide them
    tiny = f"--tiny --folder {study} --set deploy={deploy}"
    block = re.sub(r"(recokd study \S+\.toml)", rf"\1 {tiny}", block)
    assert block.count(tiny) >= 15, block
    script = tmp_path / "exact_commands.sh"
    script.write_text("set -euo pipefail\n" + block)
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (tmp_path / "log.txt").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    assert "Traceback" not in log, log[-6000:]

    # what the steps print and write
    assert re.search(r"^\+ \S*recokd bench --dataset 801 ", log, re.M), "the steps print their commands"
    results = study / "data/nnUNet_results/Dataset801_P32s2p0"
    teacher = results / "nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    assert teacher.is_file()
    for name in ("curves.txt", "curves.csv", "curves_adam.txt"):
        assert (study / name).stat().st_size > 0, name
    for bench in ("sweep/warmup0.2", "sweep/warmup0", "sweep/warmup0.6", "sweep/long", "adam-sweep/warmup0.2",
                  "adam-sweep/warmup0", "adam-sweep/warmup0.6", "adam-sweep/long20", "final", "few-sweep",
                  "few-final", "few-final/more-seeds", "few-aug", "few-options/warmup0",
                  "few-options/warmup0.6", "few-options/no-level0", "few-options/tau0", "few-nolevel0"):
        assert (study / bench / "results.md").is_file(), bench
    assert "Dataset803_P32s2p0Few" in (study / "few-final/results.md").read_text()  # regime 3's students
    assert "seeds 0, 1 " in (study / "few-final/more-seeds/results.md").read_text()  # few_seeds=2, --tiny
    assert "nnU-Net's data augmentation" in (study / "few-aug/results.md").read_text()
    assert "level_weights=[0, 0.7, 0.3]" in (study / "few-nolevel0/results.md").read_text()  # the KD option
    assert "tau=0" in (study / "few-options/tau0/results.md").read_text()
    for split in ("test", "validation"):  # the longer teacher, scored on both held-out splits
        assert json.loads((study / "teacher-long" / split / "summary.json").read_text())["num_cases"] == 2
    assert "wall time" in (study / "teacher-long/train_time.txt").read_text()
    final = (study / "final/results.md").read_text()
    for method in ("reco", "reco-sard", "reco-ca", "cwd", "fitnet", "logits", "dist"):
        assert f"| {method}" in final or f" {method} " in final, method
    int8 = json.loads((deploy / "int8_accuracy.json").read_text())
    assert int8, "int8_accuracy.json is empty"
    assert "student_t2" in (deploy / "profile.txt").read_text()
    # the by-hand teacher prediction and its evaluation
    predictions = study / "data/pred_teacher"
    assert len(list(predictions.glob("*.nii.gz"))) == 2
    summary = json.loads((predictions / "recokd_eval/summary.json").read_text())
    assert summary["num_cases"] == 2
