"""``benchmarks/studies/unlabelled.toml`` (issue 27: few labels, many unlabelled scans) end to end on its tiny
settings (``--tiny``: 10 + 2 phantoms, the evidence study's data and teacher built in the temporary study
folder, 4 extra unlabelled phantoms, 5 labelled cases, U = 3 and 7, one seed, 1 epoch x 2 iterations), in a
temporary study folder (``--folder``), and the label-free students (5 and 12 scans): first the commands of
RESULTS.md's issue-27 section as written, then the study's other steps. The figures mean nothing; what is
tested is that every step runs and each bench writes its report with the comparison against the
pseudo-label student and the students' agreement with the teacher."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_blocks import ROOT, code_blocks

pytestmark = pytest.mark.slow

STUDY = ROOT / "benchmarks/studies/unlabelled.toml"
BENCHES = ("sweep/pseudo-label-loss", "final-u39", "final-u200", "final-u39-t2")
LABEL_FREE = ("label-free-u39", "label-free-u200")
SECTION = "## Few labels, many unlabelled scans (issue 27; in progress, 2026-12-07)"


@pytest.mark.timeout(1800)
def test_the_unlabelled_study_runs_on_tiny_settings(tmp_path: Path) -> None:
    folder = tmp_path / "unlabelled"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}  # the study's own folders
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    (block,) = code_blocks("benchmarks/RESULTS.md", SECTION, "bash")
    tiny = f"--tiny --folder {folder}"
    block = re.sub(r"(recokd study benchmarks/studies/unlabelled\.toml)", rf"\1 {tiny}", block)
    assert tiny in block, block
    script = tmp_path / "commands.sh"
    script.write_text("set -euo pipefail\n" + block)
    documented = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True)
    log = documented.stdout + documented.stderr
    assert documented.returncode == 0, log[-6000:]
    proc = subprocess.run(  # the study's other steps (those of the block are done and skipped)
        [sys.executable, "-m", "recokd.cli", "study", str(STUDY), "--tiny", "--folder", str(folder)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    log += proc.stdout + proc.stderr
    (tmp_path / "log.txt").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    assert "Traceback" not in log, log[-6000:]

    extra = folder / "data/unlabelled_raw/Dataset804_P32s2p0Unlabelled/imagesTr"
    assert len(list(extra.glob("*_0000.nii.gz"))) == 4
    for bench in BENCHES:
        md = (folder / bench / "results.md").read_text()
        assert "## Against the pseudo-label student" in md, bench
        assert "labelled cases (--labelled-cases 5)" in md, bench
        with (folder / bench / "runs.csv").open(newline="") as f:
            methods = [r["method"] for r in csv.DictReader(f)]
        assert methods == ["teacher", "nokd", "pseudo", "reco+logits"], (bench, methods)
    for bench in LABEL_FREE:  # no student sees a label: no nokd, every method against pseudo only
        md = (folder / bench / "results.md").read_text()
        assert "## Against the pseudo-label student" in md and "There is no 'nokd' student" in md, bench
        with (folder / bench / "runs.csv").open(newline="") as f:
            assert [r["method"] for r in csv.DictReader(f)] == ["teacher", "pseudo", "reco+logits"], bench
    free = json.loads((folder / "label-free-u200/labelled/split.json").read_text())
    assert (free["labelled"], len(free["unlabelled"]), len(free["unlabelled_images"])) == ([], 10, 2)
    assert "--pseudo-label-loss" in (folder / "sweep/pseudo-label-loss/results.md").read_text()
    assert not (folder / "sweep/plain").exists()  # sweep-plain runs only when named
    for bench, warmup in (("sweep/warmup-0", 0.0), ("sweep/warmup-0.6", 0.6)):  # no pseudo, nokd only beside
        config = json.loads((folder / bench / "bench_config.json").read_text())
        assert config["study"]["warmup"] == warmup, bench
        with (folder / bench / "runs.csv").open(newline="") as f:
            assert [r["method"] for r in csv.DictReader(f)] == ["teacher", "nokd", "reco+logits"], bench
    # every student's agreement with the teacher, in every bench
    assert "## Agreement with the teacher on the test scans" in (folder / "final-u39/results.md").read_text()

    # U = 3: the dataset's unlabelled cases only; U = 7: its 5 + the first 2 extra phantoms
    small = json.loads((folder / "final-u39/labelled/split.json").read_text())
    assert (len(small["unlabelled"]), small["unlabelled_images"]) == (3, [])
    large = json.loads((folder / "final-u200/labelled/split.json").read_text())
    assert len(large["unlabelled"]) == 5
    assert large["unlabelled_images"] == ["P32s2p0Unlabelled_000", "P32s2p0Unlabelled_001"]
    md = (folder / "final-u200/results.md").read_text()
    assert "5 of the other 5 training cases + 2 extra scan(s)" in md
    with (folder / "final-u39-t2/runs.csv").open(newline="") as f:  # the wider students
        assert {r["t"] for r in csv.DictReader(f) if r["method"] != "teacher"} == {"2"}
