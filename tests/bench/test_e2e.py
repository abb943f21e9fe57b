"""``recokd bench --phantoms`` end to end on tiny data (real nnU-Net planning, training, prediction,
evaluation, profiling), then resumed: finished runs are skipped, a run whose training finished is
only predicted and evaluated, an interrupted KD training is started over, nothing else is touched."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from recokd.cli import main

TINY = (
    "--phantom-cases 5 --phantom-test-cases 2 --phantom-shape 24 --teacher-epochs 1 --epochs 1 "
    "--iters-per-epoch 2 --val-iters 1 --methods reco --seeds 1 -t 2 --device cpu --profile-repeats 1 "
    "--no-progress"
).split()


def _mtimes(out: Path) -> dict[Path, int]:
    files = [*out.rglob("result.json"), *out.rglob("checkpoint_final.pth"), *(out / "profile").glob("*.json")]
    return {p: p.stat().st_mtime_ns for p in files}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_phantoms_end_to_end_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench"
    argv = ["bench", "--phantoms", "-o", str(out), *TINY]
    assert main(argv) == 0, capsys.readouterr()
    first = capsys.readouterr().out
    assert first.count(": done in ") == 3 and "skip (done)" not in first
    # the teacher this bench trained is recorded once it exists, and only compared on resume
    assert first.count("teacher weights recorded") == 1 and (out / "teacher_weights.json").is_file()

    runs = _rows(out / "runs.csv")
    assert [(r["method"], r["t"], r["seed"]) for r in runs] == [
        ("teacher", "", "0"),
        ("nokd", "2", "0"),
        ("reco", "2", "0"),
    ]
    for r in runs:
        assert 0 <= float(r["mean_dice"]) <= 1 and r["n_cases"] == "2"
        assert r["small_dice"] != "" and r["dice_vessel"] != "" and r["dice_liver"] != ""
    summary = {r["method"]: r for r in _rows(out / "summary.csv")}
    assert set(summary) == {"teacher", "nokd", "reco"}
    assert summary["reco"]["n_pairs"] == "2" and summary["nokd"]["n_pairs"] == ""
    assert int(summary["teacher"]["parameters"]) > 10 * int(summary["reco"]["parameters"]) > 0
    assert float(summary["reco"]["cpu_latency_s"]) > 0
    md = (out / "results.md").read_text()
    for line in ("| teacher |  | 1 |", "| no KD | 2 | 1 |", "| reco | 2 | 1 |", "vessel (small)",
                 "1 epoch(s) x 2 training iterations"):
        assert line in md, line
    for png in ("dice_vs_latency.png", "per_class_dice.png"):
        assert (out / png).stat().st_size > 0
    reco, nokd = out / "runs/t2/reco/seed0", out / "runs/t2/nokd/seed0"
    assert next(reco.rglob("recokd_settings.json")).is_file() and (reco / "evaluation/per_case.csv").is_file()

    # resume: the no-KD run lost its result (its checkpoint is kept), the reco training was interrupted
    (nokd / "result.json").unlink()
    (reco / "result.json").unlink()
    next(reco.rglob("checkpoint_final.pth")).unlink()
    before = _mtimes(out)
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "resuming the bench" in second and second.count("skip (done)") == 1 and "profiling" not in second
    assert "t2 nokd seed 0: done in" in second and "t2 reco seed 0: done in" in second
    after = _mtimes(out)
    changed = sorted(str(p.relative_to(out)) for p in after if before.get(p) != after[p])
    assert [c for c in changed if not c.startswith("runs/t2/reco/")] == ["runs/t2/nokd/seed0/result.json"]
    assert any(c.endswith("checkpoint_final.pth") for c in changed)  # reco was trained again
    assert "training finished earlier, not repeated" in (nokd / "run.log").read_text()
    assert "holds an unfinished training: starting it over" in (reco / "run.log").read_text()
    assert len(_rows(out / "runs.csv")) == 3
