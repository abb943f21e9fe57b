"""``recokd bench --report-only``: the report of the runs finished so far, nothing started, nothing profiled,
the selection not recorded; refusals before anything is read (``recokd study --report-only``: in
test_study.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recokd.bench.config import CONFIG_FILE, RunSpec, Selection, Study, check_or_write_config
from recokd.bench.runner import BenchRunner, Layout
from recokd.cli import main
from tests.bench.test_cli import TINY
from tests.bench.test_report import _finished_run


class _NoRuns:
    """An executor that fails the test if a run is started."""

    def execute(self, *args: object) -> None:
        raise AssertionError("--report-only started a run")

    def summary(self) -> str:
        return "none"


def test_report_only_writes_the_finished_runs_and_lists_the_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    teacher = data / "nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"
    study = Study(dataset="Dataset004_Hippocampus", phantoms=None, teacher=str(teacher), epochs=2,
                  iters_per_epoch=3, val_iters=1, kd_weight=0.01)
    selection = Selection(["reco"], [2], [0, 1])
    out = tmp_path / "bench"
    check_or_write_config(out, study, selection)
    config = (out / CONFIG_FILE).read_text()
    done = {RunSpec("teacher", None, None): 0.9, RunSpec("nokd", 2, 0): 0.6, RunSpec("reco", 2, 0): 0.7}
    for spec, dice in done.items():
        _finished_run(spec.folder(out), spec.method, spec.t, spec.seed, dice)
    (RunSpec("reco", 2, 1).folder(out)).mkdir(parents=True)  # begun, not finished: no result.json
    lines: list[str] = []
    runner = BenchRunner(out, study, selection, progress=False, print_table=False, echo=lines.append,
                         executor=_NoRuns(), report_only=True)  # type: ignore[arg-type]
    raw = data / "nnUNet_raw/Dataset004_Hippocampus"
    layout = Layout(out, study.dataset, data / "nnUNet_raw", data / "nnUNet_preprocessed", raw / "imagesTs",
                    raw / "labelsTs", teacher, {2: "nnUNetPlans_recokd_t2"})
    runner.prepare = lambda: layout  # type: ignore[method-assign]  # the dataset step, not what is tested

    assert runner.run() == 0
    assert "report only: 3 of 5 runs finished" in lines
    assert runner.status == {**{s: "done" for s in done}, RunSpec("nokd", 2, 1): "not finished",
                             RunSpec("reco", 2, 1): "not finished"}
    assert not (out / "profile").exists()  # nothing profiled
    md = (out / "results.md").read_text()
    assert "- t2 nokd seed 1: not finished" in md and "- t2 reco seed 1: not finished" in md
    assert [(r.method, r.seeds) for r in runner.rows] == [("teacher", [None]), ("nokd", [0]), ("reco", [0])]
    assert (out / CONFIG_FILE).read_text() == config
    # a further selection asked with --report-only is not recorded in the bench's configuration
    check_or_write_config(out, study, Selection(["reco", "dist"], [2], [0, 1]), record=False)
    assert (out / CONFIG_FILE).read_text() == config


def test_report_only_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "b"
    assert main(["bench", *TINY, "-o", str(out), "--report-only"]) == 2
    assert f"--report-only: {out} holds no bench ({CONFIG_FILE} missing): run the bench first" in \
        capsys.readouterr().err
    assert not out.exists()
    assert main(["bench", *TINY, "-o", str(out), "--report-only", "--overwrite"]) == 2
    assert "--report-only starts no run: leave out --overwrite and --rerun" in capsys.readouterr().err
    out.mkdir()
    (out / CONFIG_FILE).write_text("{}")
    assert main(["bench", *TINY, "-o", str(out), "--report-only"]) == 2
    assert "no run of the bench" in capsys.readouterr().err
