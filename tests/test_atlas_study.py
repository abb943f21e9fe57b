"""``benchmarks/RESULTS.md``'s "Real anatomy" commands (``recokd study benchmarks/studies/atlas.toml``) run as
written, on tiny settings (``--tiny``: 10 + 2 cases, 2 epochs of 2 iterations), in a temporary study folder
(``--folder``): the dataset, the teacher, the teacher with AdamW in its own results folder, the t=2 / t=3
students, the curves of all four and the test scores of the AdamW teacher and the students. The figures
mean nothing. Skipped where Debian's mricron-data (the template and atlas) is not installed."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recokd.data.atlas import DEFAULT_ATLAS, DEFAULT_TEMPLATE
from tests.doc_blocks import ROOT, code_blocks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEFAULT_TEMPLATE.is_file() and DEFAULT_ATLAS.is_file()),
                       reason="needs Debian's mricron-data (apt-get install mricron-data)"),
]


SECTION = "## Real anatomy: subcortical structures (issue 28)"


@pytest.mark.timeout(1800)
def test_atlas_study_commands_run_as_written(tmp_path: Path) -> None:
    (block,) = code_blocks("benchmarks/RESULTS.md", SECTION, "bash")
    study = tmp_path / "atlas"
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(var, None)  # the study sets its own
    tiny = f"--tiny --folder {study}"
    block = re.sub(r"(recokd study \S+\.toml)", rf"\1 {tiny}", block)
    assert block.count(tiny) == 2, block
    script = tmp_path / "commands.sh"
    script.write_text("set -euo pipefail\n" + block)
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "Traceback" not in log, log[-6000:]
    results = study / "data/nnUNet_results/Dataset811_Subcortical"
    plans = ("nnUNetPlans", "nnUNetPlans_recokd_t2", "nnUNetPlans_recokd_t3")
    for p in plans:
        assert (results / f"nnUNetTrainerShortNoDA__{p}__3d_fullres/fold_0/checkpoint_final.pth").is_file(), p
    adamw = study / "data/nnUNet_results_adamw/Dataset811_Subcortical"
    final = adamw / "nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth"
    kept = torch.load(final, map_location="cpu", weights_only=False)  # weights only: committed (the test
    assert "optimizer_state" not in kept and "network_weights" in kept  # step below still predicts with it)
    assert "RECOKD_SHORT_OPTIMIZER=adam" in log
    with (study / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["run"].split("__")[1] for r in rows} == set(plans)
    assert len(rows) == 4 * 2  # every epoch of every run, the AdamW teacher named by its results folder
    assert sum(r["run"].startswith("nnUNet_results_adamw/") for r in rows) == 2
    assert "Amygdala_R" in rows[0] and "Caudate_L" in rows[0]
    assert (study / "curves.png").stat().st_size > 0
    # the test step: the AdamW teacher and both students scored on the held-out cases
    for run in ("teacher_adamw", "student_t2", "student_t3"):
        summary = json.loads((study / "test" / run / "summary.json").read_text())
        assert summary["num_cases"] == 2, run
        assert "foreground mean" in (study / "test" / f"{run}.txt").read_text()
