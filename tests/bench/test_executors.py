"""Executors and claims without Slurm: the sbatch script submitit writes for the ``--slurm-*`` options, the
options' parsing, the environment a job applies on its node, the claim of a run (one winner among processes
racing for it; stale claims replaced), and the local executor: ``--jobs 2`` with one GPU per run, a run
claimed by a live process left alone, a run another command finished meanwhile not started again, a
stopped training continued from its last checkpoint."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import re
import socket
from pathlib import Path

import pytest

from recokd.bench.claims import CLAIM_FILE, claim_run, local_claim, local_claim_alive, read_claim
from recokd.bench.config import RESULT_FILE, RunSpec, Selection
from recokd.bench.executors import (
    FINISHED_ELSEWHERE,
    LocalExecutor,
    SlurmSettings,
    parse_sbatch_option,
    parse_slurm_time,
)
from recokd.cli import main
from recokd.errors import UserError
from tests.bench.test_runner import _setup


def test_sbatch_script_of_the_slurm_options(tmp_path: Path) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    from recokd.bench.slurm import SlurmBench

    settings = SlurmSettings(
        partition="gpu",
        gpus_per_job=2,
        time_min=90,
        mem="32G",
        cpus=8,
        options=dict([parse_sbatch_option("account=proj"), parse_sbatch_option("--qos=hi")]),
    )
    script = _make_sbatch_string(
        command="run", folder=tmp_path, **SlurmBench(settings).parameters("afterok:12")
    )
    for line in (
        "--partition=gpu",
        "--gpus-per-node=2",
        "--time=90",
        "--mem=32G",
        "--cpus-per-task=8",
        "--account=proj",
        "--qos=hi",
        "--dependency=afterok:12",
        "--job-name=recokd-bench",
    ):
        assert f"#SBATCH {line}\n" in script, line
    plain = _make_sbatch_string(
        command="run", folder=tmp_path, **SlurmBench(SlurmSettings()).parameters(None)
    )
    assert "--dependency" not in plain and "--partition" not in plain and "--gpus" not in plain
    assert "#SBATCH --time=1440\n" in plain


def test_slurm_time_and_options() -> None:
    assert [parse_slurm_time(t) for t in ("90", "1:30", "02:00:00", "1-00", "1-02:30", "0-00:00:30")] == [
        90,
        2,
        120,
        1440,
        1590,
        1,
    ]
    for bad in ("", "1h", "0", "1-", "a:b"):
        with pytest.raises(UserError, match="--slurm-time"):
            parse_slurm_time(bad)
    assert parse_sbatch_option("--mail-user=a@b.c") == ("mail_user", "a@b.c")
    for bad in ("account", "=x", "array=0-3", "dependency=afterok:1"):
        with pytest.raises(UserError, match="--slurm-option"):
            parse_sbatch_option(bad)


def test_a_job_applies_the_run_environment_and_keeps_the_node_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recokd.bench.slurm import environment_change

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("RECOKD_SETTINGS", "/stale.json")
    monkeypatch.setenv("KEEP", "1")
    env = {k: v for k, v in os.environ.items() if k not in ("RECOKD_SETTINGS", "CUDA_VISIBLE_DEVICES")}
    env["nnUNet_results"] = "/bench/runs/x"
    set_env, unset = environment_change(env)
    assert set_env == {"nnUNet_results": "/bench/runs/x"}
    assert unset == ["RECOKD_SETTINGS"]  # the GPUs are the node's (Slurm sets them)


def test_bench_options_of_the_other_executor_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for extra, message in (
        (["--slurm-mem", "4G", "--no-wait"], "--slurm-mem, --no-wait apply to --executor slurm only"),
        (["--executor", "slurm", "--jobs", "2"], "--jobs applies to --executor local"),
    ):
        assert main(["bench", "--phantoms", "-o", str(tmp_path / "b"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_overwrite_refuses_a_folder_with_runs_in_flight(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "b/runs/t2/reco/seed0"
    run.mkdir(parents=True)
    (run / CLAIM_FILE).write_text(json.dumps(local_claim()))  # this process: alive
    assert main(["bench", "--phantoms", "-o", str(tmp_path / "b"), "--overwrite"]) == 2
    assert f"runs in flight (process {os.getpid()} on host" in capsys.readouterr().err
    assert (run / CLAIM_FILE).is_file()


def _claimer(folder: str, start: mp.Barrier, done: mp.Event, results: mp.Queue) -> None:
    start.wait()
    from recokd.bench.claims import bench_lock

    with bench_lock(Path(folder).parent):
        other = claim_run(Path(folder), local_claim(), local_claim_alive)
    results.put(os.getpid() if other is None else None)
    done.wait(60)  # stay alive: the winner's claim must stay live while the others try


def test_one_of_several_racing_processes_claims_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "bench/runs/t2/reco/seed0"
    ctx = mp.get_context("spawn")
    n = 4
    start, done, results = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(folder), start, done, results)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=60) for _ in range(n)]
    finally:
        done.set()
        for p in procs:
            p.join(30)
    winners = [g for g in got if g is not None]
    assert len(winners) == 1 and read_claim(folder)["pid"] == winners[0]


def test_stale_claims_are_replaced_and_foreign_hosts_respected(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    gone = mp.get_context("spawn").Process(target=int)
    gone.start()
    gone.join()
    dead = {**local_claim(), "pid": gone.pid}
    (folder).mkdir()
    (folder / CLAIM_FILE).write_text(json.dumps(dead))
    mine = local_claim(n=1)
    assert claim_run(folder, mine, local_claim_alive) is None and read_claim(folder) == mine
    assert claim_run(folder, local_claim(n=2), local_claim_alive) == mine  # this process is alive
    foreign = {**dead, "host": socket.gethostname() + "-elsewhere"}
    (folder / CLAIM_FILE).write_text(json.dumps(foreign))
    assert claim_run(folder, mine, local_claim_alive) == foreign  # cannot be checked from here: kept


def test_local_jobs_run_students_two_at_a_time_one_gpu_each(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    teacher = tmp_path / "results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"
    runner, layout = _setup(tmp_path, teacher=str(teacher))
    runner.selection = Selection(["reco"], [2], [0, 1])
    runner.executor = LocalExecutor(jobs=2, gpus=["0", "1"])
    # a live claim (this process) on one run: it is not started here
    claimed = RunSpec("nokd", 2, 1).folder(layout.out)
    claimed.mkdir(parents=True)
    (claimed / CLAIM_FILE).write_text(json.dumps(local_claim()))
    status = runner.run_all(layout)  # real workers: every run fails fast (no dataset, no teacher)
    out = capsys.readouterr().out
    assert status[RunSpec("nokd", 2, 1)] == "in flight" and not (claimed / "run.log").exists()
    assert f"t2 nokd seed 1: being run by process {os.getpid()}" in out
    assert status[RunSpec("teacher", None, None)] == "failed" and status[RunSpec("nokd", 2, 0)] == "failed"
    assert "t2 reco seed 0: FAILED: no teacher" in out and "t2 reco seed 1: FAILED: no teacher" in out
    gpus = {
        re.search(r"CUDA_VISIBLE_DEVICES=([^,\s]*),", (s.folder(layout.out) / "run.log").read_text()).group(1)
        for s in (RunSpec("teacher", None, None), RunSpec("nokd", 2, 0))
    }
    assert gpus <= {"0", "1"} and re.search(r"teacher: started on GPU [01]\n", out)
    assert not (RunSpec("nokd", 2, 0).folder(layout.out) / CLAIM_FILE).exists()  # released after the run
    assert (claimed / CLAIM_FILE).exists()  # another's claim is left alone
    md_status = {s.label: runner.details.get(s) for s in status}
    assert "exit code" in md_status["t2 nokd seed 0"] and "run.log" in md_status["t2 nokd seed 0"]


class _Events:
    """The runner's side of one run, recording what the executor tells it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.told: list[tuple[str, RunSpec, str]] = []

    def teacher_missing(self, layout: object) -> None:
        return None

    def run_job(self, layout: object, spec: RunSpec) -> tuple[dict, dict]:
        raise AssertionError(f"{spec.label} was started again")

    def finished(self, spec: RunSpec, seconds: float | None, detail: str, logs: list[Path]) -> None:
        self.told.append(("finished", spec, detail))

    def claimed_elsewhere(self, spec: RunSpec, claim: dict) -> None:
        self.told.append(("claimed", spec, str(claim)))


def test_a_run_finished_by_another_command_meanwhile_is_not_started_again(tmp_path: Path) -> None:
    """Two commands on one folder (e.g. two shells, one thread each): each plans its runs at its start, and
    the other may finish one of them before this one reaches it."""
    events = _Events(tmp_path / "out")
    spec = RunSpec("pseudo", 2, 2)
    folder = spec.folder(events.out)
    folder.mkdir(parents=True)
    (folder / RESULT_FILE).write_text("{}")
    free: queue.Queue[str | None] = queue.Queue()
    free.put(None)
    LocalExecutor()._one(events, None, spec, free)  # type: ignore[arg-type]
    assert events.told == [("finished", spec, FINISHED_ELSEWHERE)]
    assert not (folder / CLAIM_FILE).exists()  # not claimed either


def test_a_stopped_training_continues_from_its_last_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from recokd.bench.worker import _train

    fold = tmp_path / "model/fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"")
    (fold / "recokd_settings.json").write_text("{}")
    job = {
        "fold_folder": str(fold),
        "train": {
            "type": "recokd",
            "argv": ["train", "Dataset999_Missing", "3d_fullres", "0", "--teacher", "x"],
        },
    }
    with pytest.raises(UserError):  # the dataset does not exist: recokd train stops, after its command line
        _train(job)
    printed = capsys.readouterr().out
    assert "continuing it from checkpoint_latest.pth" in printed
    assert "$ recokd train Dataset999_Missing 3d_fullres 0 --teacher x --c\n" in printed
    (fold / "recokd_settings.json").unlink()  # not a recokd training: started over
    with pytest.raises(UserError):
        _train(job)
    assert "--overwrite\n" in capsys.readouterr().out


def test_local_jobs_without_gpus_share_the_cpu_cores(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECOKD_CPU_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    teacher = tmp_path / "results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"
    runner, layout = _setup(tmp_path, teacher=str(teacher))
    runner.selection = Selection(["nokd"], [2], [0, 1])
    runner.executor = LocalExecutor(jobs=2)
    assert runner.executor.summary() == "2 local run(s) at a time, 2 CPU thread(s) each"
    runner.run_all(layout)  # real workers: every run fails fast (no dataset, no teacher)
    for seed in (0, 1):
        log = (RunSpec("nokd", 2, seed).folder(layout.out) / "run.log").read_text()
        assert "RECOKD_CPU_THREADS=2)" in log
    # the teacher runs alone first: every core
    teacher_log = RunSpec("teacher", None, None).folder(layout.out) / "run.log"
    assert "RECOKD_CPU_THREADS=4)" in teacher_log.read_text()
    assert LocalExecutor(jobs=8).cpu_share() == 1  # never below one thread
    monkeypatch.setenv("RECOKD_CPU_THREADS", "3")  # the user's own setting is kept
    assert runner.executor.summary() == "2 local run(s) at a time, 3 CPU thread(s) each"


def test_a_stock_run_trains_on_its_share_of_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nnU-Net's run_training keeps torch's threads (its entry point sets them): the worker sets them from
    RECOKD_CPU_THREADS before it, as for `recokd train` runs."""
    import nnunetv2.run.run_training as nnunet_training
    import torch

    from recokd.bench import worker

    seen = []

    def run_training(*args, **kwargs) -> None:  # records the threads nnU-Net's training would run with
        seen.append(torch.get_num_threads())
        (tmp_path / "fold_0").mkdir()
        (tmp_path / "fold_0/checkpoint_final.pth").write_bytes(b"")

    monkeypatch.setattr(nnunet_training, "run_training", run_training)
    monkeypatch.setenv("RECOKD_CPU_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # what torch would keep without the worker's setting
    try:
        train = {"type": "stock", "dataset": "Dataset001_X", "configuration": "3d_fullres", "fold": "0",
                 "trainer": "nnUNetTrainerShortNoDA", "plans": "nnUNetPlans", "device": "cpu"}
        assert worker._train({"train": train, "fold_folder": str(tmp_path / "fold_0")})
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
