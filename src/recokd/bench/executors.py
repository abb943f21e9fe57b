"""Where the runs of a bench are executed: :class:`LocalExecutor` (worker processes on this machine, ``--jobs
N`` of them at once, one GPU each) or, through :mod:`recokd.bench.slurm`, one Slurm job per run
(``--executor slurm``). Both claim a run before starting it (:mod:`recokd.bench.claims`) and leave the report
to the runner, which they tell about every run through :class:`RunEvents`.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from recokd.bench.claims import (
    bench_lock,
    claim_run,
    local_claim,
    local_claim_alive,
    release_claim,
    write_claim,
)
from recokd.bench.config import LOG_FILE, RESULT_FILE, TEACHER, RunSpec
from recokd.bench.worker import command
from recokd.errors import UserError
from recokd.json_files import write_json_atomic
from recokd.nnunet.layout import CPU_THREADS_ENV

if TYPE_CHECKING:
    from recokd.bench.runner import Layout


def launch(
    job: dict[str, Any],
    job_file: Path,
    log: Path,
    env: dict[str, str],
    show_stderr: bool = False,
    started: Callable[[int], None] | None = None,
) -> int:
    """Write ``job`` to ``job_file`` and run it in a worker (a fresh interpreter with ``env``); its stdout
    (and, unless ``show_stderr``, its stderr) is appended to ``log``; ``started`` gets the worker's pid.
    Returns the worker's exit code."""
    write_json_atomic(job_file, job)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:
        f.write(f"\n##### {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command(job_file))}\n")
        f.flush()
        stderr = None if show_stderr else subprocess.STDOUT
        with subprocess.Popen(command(job_file), stdout=f, stderr=stderr, env=env) as proc:
            if started is not None:
                started(proc.pid)
            return proc.wait()


def claim_alive(claim: dict[str, Any]) -> bool:
    """Whether the owner of a run's claim (a local process or a Slurm job) is still at work."""
    if claim.get("executor") == "slurm":
        from recokd.bench.slurm import slurm_claim_alive

        return slurm_claim_alive(claim)
    return local_claim_alive(claim)


#: the detail of a run another command finished after this one planned it (not started again)
FINISHED_ELSEWHERE = "finished by another command"


class RunEvents(Protocol):
    """What an executor tells the runner (implemented by :class:`recokd.bench.runner.BenchRunner`)."""

    out: Path

    def run_job(self, layout: Layout, spec: RunSpec) -> tuple[dict[str, Any], dict[str, str]]: ...
    def teacher_missing(self, layout: Layout) -> Path | None: ...
    def note(self, spec: RunSpec, text: str) -> None: ...
    def no_teacher(self, spec: RunSpec, checkpoint: Path) -> None: ...
    def claimed_elsewhere(self, spec: RunSpec, claim: dict[str, Any]) -> None: ...
    def finished(self, spec: RunSpec, seconds: float | None, detail: str, logs: list[Path]) -> None: ...
    def worker_options(self, spec: RunSpec, env: dict[str, str]) -> bool: ...


def visible_gpus() -> list[str]:
    """The GPUs a local run may be given (``CUDA_VISIBLE_DEVICES``' entries, else 0..count-1); [] without
    CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None and given.strip():
        return [g.strip() for g in given.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class LocalExecutor:
    """Runs the runs as worker processes on this machine, the teacher first, then the students ``jobs`` at a
    time; with ``gpus`` (CUDA devices), each run gets one of them (``CUDA_VISIBLE_DEVICES``), never two runs
    the same one at once."""

    jobs: int = 1
    gpus: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.gpus:
            gpus = f", GPUs {','.join(self.gpus)}"
        elif self.jobs > 1:
            threads = os.environ.get(CPU_THREADS_ENV) or self.cpu_share()
            gpus = f", {threads} CPU thread(s) each"
        else:
            gpus = ""
        return f"{self.jobs} local run(s) at a time{gpus}"

    def cpu_share(self, runs: int | None = None) -> int:
        """Torch's CPU threads of each run without GPUs when ``jobs`` (or fewer: ``runs``, e.g. the teacher
        alone) run at once: its share of the cores (at least one), so that they do not each take every core
        and slow one another down."""
        at_once = self.jobs if runs is None else max(1, min(self.jobs, runs))
        return max(1, (os.cpu_count() or 1) // at_once)

    def execute(self, runner: RunEvents, layout: Layout, specs: list[RunSpec]) -> None:
        free: queue.Queue[str | None] = queue.Queue()
        for slot in range(self.jobs):
            free.put(self.gpus[slot % len(self.gpus)] if self.gpus else None)
        teacher = [s for s in specs if s.method == TEACHER]
        students = [s for s in specs if s.method != TEACHER]
        for group in (teacher, students):
            if self.jobs == 1:  # in this thread (the demo's training bars write to this terminal)
                for spec in group:
                    self._one(runner, layout, spec, free)
                continue
            share = self.cpu_share(len(group))
            with ThreadPoolExecutor(self.jobs) as pool:
                for future in [pool.submit(self._one, runner, layout, spec, free, share) for spec in group]:
                    future.result()

    def _one(
        self, runner: RunEvents, layout: Layout, spec: RunSpec, free: queue.Queue[str | None],
        share: int | None = None,
    ) -> None:
        """One run in a worker process (``share``: its CPU threads when several run at once without GPUs)."""
        missing = runner.teacher_missing(layout) if spec.method != TEACHER else None
        if missing is not None and spec.method != "nokd":
            runner.no_teacher(spec, missing)
            return
        folder = spec.folder(runner.out)
        claim = local_claim()
        with bench_lock(runner.out):
            # another command on this folder may have finished it since this one planned its runs
            finished = (folder / RESULT_FILE).is_file()
            other = None if finished else claim_run(folder, claim, claim_alive)
        if finished:
            runner.finished(spec, None, FINISHED_ELSEWHERE, [])
            return
        if other is not None:
            runner.claimed_elsewhere(spec, other)
            return
        gpu = free.get()
        try:
            job, env = runner.run_job(layout, spec)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            elif share is not None and CPU_THREADS_ENV not in os.environ:
                env[CPU_THREADS_ENV] = str(share)
                env.setdefault("OMP_NUM_THREADS", env[CPU_THREADS_ENV])  # numpy's / scipy's OpenMP too
            show_stderr = runner.worker_options(spec, env)
            if self.jobs > 1:
                runner.note(spec, "started" + (f" on GPU {gpu}" if gpu is not None else ""))
            log = folder / LOG_FILE

            def started(pid: int) -> None:
                claim["worker_pid"] = pid
                write_claim(folder, claim)

            t0 = time.perf_counter()
            rc = launch(job, folder / "job.json", log, env, show_stderr=show_stderr, started=started)
            runner.finished(spec, time.perf_counter() - t0, f"exit code {rc}", [log])
        finally:
            release_claim(folder, claim)
            free.put(gpu)


# ---------------------------------------------------------------------------- Slurm settings


@dataclass
class SlurmSettings:
    """The ``--slurm-*`` options: what every job asks of the scheduler."""

    partition: str | None = None
    gpus_per_job: int = 0
    time_min: int = 24 * 60
    mem: str | None = None
    cpus: int | None = None
    #: further ``#SBATCH --KEY=VALUE`` lines (``--slurm-option``), e.g. ``account``, ``qos``, ``constraint``
    options: dict[str, str] = field(default_factory=dict)
    #: seconds between two looks at the jobs while waiting
    poll_s: float = 10.0
    wait: bool = True


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_slurm_time(text: str) -> int:
    """Slurm's time limit (``MM``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``; ``MM:SS``) in whole
    minutes, rounded up; UserError if it is none of these."""
    m = _TIME.match(text.strip())
    if not m:
        raise UserError(f"--slurm-time: expected minutes or Slurm's [D-]HH:MM:SS, got {text!r}")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    assert a is not None
    if days is None:
        if b is None:
            seconds = a * 60
        elif c is None:
            seconds = a * 60 + b
        else:
            seconds = a * 3600 + b * 60 + c
    else:
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if seconds <= 0:
        raise UserError(f"--slurm-time: must be more than 0, got {text!r}")
    return -(-seconds // 60)


def parse_sbatch_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (an ``sbatch --KEY=VALUE`` option, leading dashes allowed) of ``--slurm-option``."""
    key, eq, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not eq or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
        raise UserError(
            f"--slurm-option: expected KEY=VALUE (an sbatch option such as account=myproject), got {text!r}"
        )
    reserved = {"array", "output", "error", "dependency", "job-name", "signal", "open-mode", "wrap"}
    if key.replace("_", "-") in reserved:
        raise UserError(f"--slurm-option {key}: set by the bench itself")
    return key.replace("-", "_"), value
