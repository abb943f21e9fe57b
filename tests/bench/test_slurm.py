"""``recokd bench --executor slurm`` against a real Slurm (the single-node one `.ci/slurm up` starts): a tiny
study (no KD and ReCo-KD, 2 seeds, on tiny phantoms) goes through ``sbatch``; a second command on the folder
submits nothing (every run is in flight); one student's job is cancelled with ``scancel`` mid-run, the bench
reports it failed with its logs, and the next command resubmits only that run; the report then equals that
of the same study run locally with ``--executor local --jobs 2`` (same seeds: same Dice)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = (
    "--phantoms --phantom-cases 5 --phantom-test-cases 2 --phantom-shape 24 --teacher-epochs 1 --epochs 2 "
    "--iters-per-epoch 2 --val-iters 1 --methods reco --seeds 2 -t 2 --device cpu --no-profile --no-progress"
).split()
#: one CPU per job: the CI machine may have two
SLURM = ["--executor", "slurm", "--slurm-cpus", "1", "--slurm-time", "15"]


def slurm_unavailable() -> str | None:
    """Why this machine has no usable Slurm (None: it has one, with job accounting)."""
    for cmd in ("sbatch", "sinfo", "sacct", "scancel"):
        if shutil.which(cmd) is None:
            return f"{cmd} not found: no Slurm here (`.ci/slurm up` starts one, as root)"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        acct = subprocess.run(["sacct", "-n", "-X"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "Slurm does not answer (sinfo/sacct timed out)"
    if nodes.returncode != 0 or not re.search(r"idle|mixed|allocated", nodes.stdout):
        return f"no Slurm node takes jobs (sinfo: {(nodes.stdout + nodes.stderr).strip()[:200]})"
    if acct.returncode != 0:
        return f"Slurm has no job accounting, submitit needs sacct ({acct.stderr.strip()[:200]})"
    return None


def _env() -> dict[str, str]:
    # one thread per training: the runs are then the same computation under Slurm and locally
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _bench(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recokd.cli", "bench", "-o", str(out), *TINY, *extra]


def _run(argv: list[str]) -> tuple[int, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _dice(out: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with (out / "runs.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        (r["method"], r["t"], r["seed"]): {k: v for k, v in r.items() if "dice" in k or k == "n_cases"}
        for r in rows
    }


def _wait_for(predicate, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


@pytest.mark.timeout(900)
def test_bench_through_slurm_with_a_cancelled_job_equals_the_local_bench(tmp_path: Path) -> None:
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    out, local = tmp_path / "slurm_bench", tmp_path / "local_bench"
    rc, first = _run(_bench(out, *SLURM, "--no-wait"))
    assert rc == 0, first
    teacher_job = re.search(r"teacher: submitted as Slurm job (\d+)\n", first).group(1)
    arrays = re.findall(rf"submitted as Slurm job (\d+)_\d \(after job {teacher_job}\)\n", first)
    assert len(arrays) == 4 and len(set(arrays)) == 1, first  # the students: one array after the teacher
    assert "5 run(s) in flight, 0 done" in first
    assert len(list(out.rglob("claim.json"))) == 5

    # the same study locally, two runs at once, meanwhile (on a copy of the prepared phantoms)
    local.mkdir()
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(out / name, local / name)
    for name in ("prepared.json", "bench_config.json"):
        shutil.copy(out / name, local / name)
    local_bench = subprocess.Popen(
        _bench(local, "--executor", "local", "--jobs", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
    )
    try:
        # a second command finds every run in flight and submits nothing
        rc, second = _run(_bench(out, *SLURM, "--no-wait"))
        assert rc == 0, second
        assert second.count("in flight as Slurm job") == 5 and "submitted as" not in second, second

        # a student's job is cancelled once its worker is at work
        victim = out / "runs/t2/reco/seed1"
        log = victim / "run.log"
        _wait_for(lambda: log.exists() and "$ recokd train" in log.read_text(), "t2 reco seed 1 to train")
        job_id = re.search(r'"job_id": "([^"]+)"', (victim / "claim.json").read_text()).group(1)
        subprocess.run(["scancel", job_id], check=True)
        _wait_for(
            lambda: "CANCELLED" in subprocess.run(
                ["sacct", "-n", "-X", "-j", job_id, "-o", "State"], capture_output=True, text=True
            ).stdout,
            f"job {job_id} to be cancelled",
        )
        assert not (victim / "result.json").exists()

        # the next command resubmits that run only, waits for every job and reports
        rc, third = _run(_bench(out, *SLURM))
        assert rc == 0, third
        assert re.search(
            rf"t2 reco seed 1: Slurm job {job_id} ended CANCELLED.* without finishing the run \(log: \S+"
            rf"{job_id}_0_log.out\): submitting it again", third
        ), third
        assert third.count("submitted as Slurm job") == 1, third
        assert "t2 reco seed 1: done (mean Dice" in third and not list(out.rglob("claim.json"))
        text, _ = local_bench.communicate(timeout=600)
    finally:
        if local_bench.poll() is None:
            local_bench.kill()
    assert local_bench.returncode == 0, text
    assert text.count(": started") == 5 and text.count(": done in") == 5, text
    slurm_dice, local_dice = _dice(out), _dice(local)
    assert len(slurm_dice) == 5 and slurm_dice == local_dice
    print("\n--- Slurm ---\n" + (out / "results.md").read_text() + "\n--- local ---\n"
          + (local / "results.md").read_text())
