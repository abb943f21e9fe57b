"""``recokd bench --executor slurm``: every unfinished run becomes a Slurm job, submitted through submitit.

The teacher is one job; the students are one job array that starts once the teacher's job has ended well
(``afterok``; no dependency when the teacher is finished already). Each job runs :class:`SlurmRun`: the run's
worker (:mod:`recokd.bench.worker`) in a fresh interpreter with the run's nnU-Net environment, its log
appended to the run's ``run.log``; submitit's own log of the job is ``OUT/slurm/<job id>_0_log.out``. A job
stopped by the scheduler's time limit or by preemption is requeued by submitit
(:class:`submitit.helpers.Checkpointable`) and continues the run from its last checkpoint; any other job that
ends without the run's ``result.json`` (failed, cancelled) is reported with its logs, and the next ``recokd
bench`` resubmits the run (resuming it from its last checkpoint). The bench folder, on a filesystem the login
and compute nodes share, is the only state: the claims (:mod:`recokd.bench.claims`) name the job of every run
in flight, so that a later or concurrent ``recokd bench`` waits for those jobs instead of submitting the runs
again.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit
from submitit.helpers import Checkpointable

from recokd.bench.claims import CLAIM_FILE, bench_lock, describe, read_claim, release_claim, write_claim
from recokd.bench.config import LOG_FILE, NOKD, RESULT_FILE, TEACHER, RunSpec
from recokd.bench.executors import FINISHED_ELSEWHERE, RunEvents, SlurmSettings, claim_alive, launch
from recokd.errors import UserError

if TYPE_CHECKING:
    from recokd.bench.runner import Layout

#: submitit's folder of the jobs (their pickled calls and logs) inside the bench folder
SLURM_FOLDER = "slurm"
#: variables of the submitting shell that are the node's business, never copied into a job
NODE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HOSTNAME", "TMPDIR")


class SlurmRun(Checkpointable):
    """The call a job makes: run the bench's worker on ``job_file`` in a fresh interpreter, with the node's
    environment changed by ``set_env``/``unset_env`` (the run's nnU-Net folders, seed, schedule). Requeued by
    submitit on a time limit or preemption (the inherited :meth:`checkpoint`: the same call again, which
    resumes the training from its last checkpoint)."""

    def __init__(
        self, job: dict[str, Any], job_file: str, log: str, set_env: dict[str, str], unset_env: list[str]
    ):
        self.job, self.job_file, self.log = job, job_file, log
        self.set_env, self.unset_env = set_env, unset_env

    def __call__(self) -> None:
        env = dict(os.environ)
        env.update(self.set_env)
        for name in self.unset_env:
            env.pop(name, None)
        rc = launch(self.job, Path(self.job_file), Path(self.log), env)
        if rc != 0:
            raise RuntimeError(f"the bench worker ended with exit code {rc}; see {self.log}")


def environment_change(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """What a run's environment ``env`` sets and removes relative to this process's (what the job must apply
    to the node's environment), leaving the node's own variables (GPUs, host, temporary folder) alone."""
    set_env = {k: v for k, v in env.items() if os.environ.get(k) != v and k not in NODE_VARIABLES}
    unset = [k for k in os.environ if k not in env and k not in NODE_VARIABLES]
    return set_env, unset


def job_of(claim: dict[str, Any]) -> submitit.SlurmJob:
    """The submitit job of a run's Slurm claim."""
    return submitit.SlurmJob(folder=claim["folder"], job_id=str(claim["job_id"]))


def slurm_claim_alive(claim: dict[str, Any]) -> bool:
    """Whether the Slurm job of ``claim`` has not ended yet (submitit: its result file, else ``sacct``)."""
    try:
        return not job_of(claim).done(force_check=True)
    except KeyError:
        return False


def stale_claim_text(claim: dict[str, Any]) -> str:
    """What became of the owner of a claim that is no longer alive (a failed, cancelled or killed job)."""
    if claim.get("executor") != "slurm":
        return f"{describe(claim)} ended without finishing the run"
    job = job_of(claim)
    try:
        state = job.state
    except KeyError:
        state = "UNKNOWN"
    return f"{describe(claim)} ended {state} without finishing the run (log: {job.paths.stdout})"


def check_slurm() -> None:
    """UserError unless Slurm's commands are here."""
    import shutil

    missing = [c for c in ("sbatch", "sacct", "scancel", "srun") if shutil.which(c) is None]
    if missing:
        raise UserError(
            f"--executor slurm: {', '.join(missing)} not found; run the bench on a Slurm login node"
        )


class SlurmBench:
    """Submits the unfinished runs of a bench and waits for their jobs (see the module doc)."""

    def __init__(self, settings: SlurmSettings):
        self.settings = settings

    def summary(self) -> str:
        s = self.settings
        asked = [f"partition {s.partition}" if s.partition else "default partition",
                 f"{s.gpus_per_job} GPU(s)", f"{s.time_min} min"]
        return f"one Slurm job per run ({', '.join(asked)} each)"

    def parameters(self, dependency: str | None) -> dict[str, Any]:
        """submitit's ``SlurmExecutor.update_parameters`` of every job (``dependency``: ``afterok:12``)."""
        s = self.settings
        extra: dict[str, Any] = dict(s.options)
        if s.mem is not None:
            extra["mem"] = s.mem  # Slurm's syntax (32G), not submitit's number of GB
        params: dict[str, Any] = {"job_name": "recokd-bench", "time": s.time_min, "stderr_to_stdout": True}
        if s.partition:
            params["partition"] = s.partition
        if s.gpus_per_job:
            params["gpus_per_node"] = s.gpus_per_job
        if s.cpus:
            params["cpus_per_task"] = s.cpus
        if dependency:
            params["dependency"] = dependency
        if extra:
            params["additional_parameters"] = extra
        return params

    def _executor(self, folder: Path, dependency: str | None) -> submitit.SlurmExecutor:
        ex = submitit.SlurmExecutor(folder=folder / "%j", python=shlex.quote(sys.executable))
        ex.update_parameters(**self.parameters(dependency))
        return ex

    def _call(self, runner: RunEvents, layout: Layout, spec: RunSpec) -> SlurmRun:
        job, env = runner.run_job(layout, spec)
        runner.worker_options(spec, env)
        folder = spec.folder(runner.out)
        set_env, unset = environment_change(env)
        return SlurmRun(job, str(folder / "job.json"), str(folder / LOG_FILE), set_env, unset)

    def _claim(self, spec: RunSpec, out: Path, job: submitit.Job[Any], folder: Path) -> dict[str, Any]:
        claim = {
            "executor": "slurm",
            "job_id": job.job_id,
            "folder": str(folder / "%j"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_claim(spec.folder(out), claim)
        return claim

    def submit(
        self, runner: RunEvents, layout: Layout, specs: list[RunSpec]
    ) -> dict[RunSpec, submitit.Job[Any]]:
        """Submit every run of ``specs`` no live job holds; returns the job of every run in flight (submitted
        now or by an earlier command). Holds the bench lock throughout, so that no two commands submit a
        run."""
        out = runner.out
        folder = out / SLURM_FOLDER
        jobs: dict[RunSpec, submitit.Job[Any]] = {}
        with bench_lock(out):
            todo = []
            for spec in specs:
                if (spec.folder(out) / RESULT_FILE).is_file():  # by another command since this one planned
                    (spec.folder(out) / CLAIM_FILE).unlink(missing_ok=True)  # as BenchRunner.run_all does
                    runner.finished(spec, None, FINISHED_ELSEWHERE, [])
                    continue
                claim = read_claim(spec.folder(out))
                if claim is not None and claim_alive(claim):
                    if claim.get("executor") != "slurm":
                        runner.claimed_elsewhere(spec, claim)
                        continue
                    jobs[spec] = job_of(claim)
                    runner.note(spec, f"in flight as {describe(claim)} (submitted {claim.get('since')})")
                else:
                    if claim is not None:
                        runner.note(spec, f"{stale_claim_text(claim)}: submitting it again")
                    todo.append(spec)
            teacher_job = next((j for s, j in jobs.items() if s.method == TEACHER), None)
            for spec in [s for s in todo if s.method == TEACHER]:
                teacher_job = self._executor(folder, None).submit(self._call(runner, layout, spec))
                jobs[spec] = teacher_job
                self._claim(spec, out, teacher_job, folder)
                runner.note(spec, f"submitted as Slurm job {teacher_job.job_id}")
            students = []
            for spec in (s for s in todo if s.method != TEACHER):
                missing = runner.teacher_missing(layout)
                if teacher_job is None and missing is not None and spec.method != NOKD:
                    runner.no_teacher(spec, missing)
                else:
                    students.append(spec)
            if students:
                after = f"afterok:{teacher_job.job_id}" if teacher_job is not None else None
                ex = self._executor(folder, after)
                calls = [self._call(runner, layout, spec) for spec in students]
                with ex.batch():
                    submitted = [ex.submit(call) for call in calls]
                for spec, job in zip(students, submitted, strict=True):
                    jobs[spec] = job
                    self._claim(spec, out, job, folder)
                    runner.note(
                        spec,
                        f"submitted as Slurm job {job.job_id}"
                        + (f" (after job {teacher_job.job_id})" if after else ""),
                    )
        return jobs

    def execute(self, runner: RunEvents, layout: Layout, specs: list[RunSpec]) -> None:
        jobs = self.submit(runner, layout, specs)
        if not self.settings.wait or not jobs:
            return
        of = {id(job): spec for spec, job in jobs.items()}
        left = set(jobs)
        for job in submitit.helpers.as_completed(list(jobs.values()), poll_frequency=self.settings.poll_s):
            spec = of[id(job)]
            if spec not in left:
                continue  # cancelled below (its teacher failed) and reported then
            left.discard(spec)
            self._report(runner, spec, job)
            if spec.method == TEACHER and runner.teacher_missing(layout) is not None:
                # the students wait for the teacher's job to end well: they never will
                missing = runner.teacher_missing(layout)
                assert missing is not None
                for other in sorted(left, key=lambda s: s.key):
                    other_job = jobs[other]
                    if not other_job.done():
                        other_job.cancel(check=False)
                    self._release(runner, other, other_job)
                    if other.method == NOKD:
                        why = f"Slurm job {other_job.job_id} cancelled: it waited for the failed teacher"
                        runner.finished(other, None, why, [])
                    else:
                        runner.no_teacher(other, missing)
                left.clear()

    def _report(self, runner: RunEvents, spec: RunSpec, job: submitit.Job[Any]) -> None:
        self._release(runner, spec, job)
        folder = spec.folder(runner.out)
        state = job.get_info(mode="force").get("State") or job.state
        runner.finished(
            spec, None, f"Slurm job {job.job_id} {state}", [folder / LOG_FILE, job.paths.stdout]
        )

    def _release(self, runner: RunEvents, spec: RunSpec, job: submitit.Job[Any]) -> None:
        """Remove the run's claim if it is still that of ``job``."""
        folder = spec.folder(runner.out)
        claim = read_claim(folder)
        if claim is not None and str(claim.get("job_id")) == str(job.job_id):
            release_claim(folder, claim)
