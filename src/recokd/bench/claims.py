"""Who is running which run of a bench folder, so that two ``recokd bench`` commands on one folder (on one
machine, or on several machines sharing it) never start the same run twice.

A command that starts a run first writes the run's claim, ``OUT/.../claim.json`` (who: a local process, or a
Slurm job), and removes it when the run is over; ``result.json`` stays the only mark of a finished run. A
claim is checked and written only while the command holds the bench folder's lock (``OUT/bench.lock``, an
exclusive ``flock``, which Linux maps onto NFS's byte-range locks), so two commands cannot both find a run
unclaimed. A claim whose owner is gone (a killed process, a Slurm job that ended) is stale: the next command
replaces it, and the run is resumed (from the last checkpoint of its training).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recokd.json_files import write_json_atomic

CLAIM_FILE = "claim.json"
LOCK_FILE = "bench.lock"


@contextmanager
def bench_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive lock of the bench folder ``out`` (blocks while another command holds it)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def local_claim(**extra: Any) -> dict[str, Any]:
    """The claim of a run started by this process on this host."""
    return {
        "executor": "local",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }


def read_claim(folder: Path) -> dict[str, Any] | None:
    """The claim of the run in ``folder``; None if there is none (an unreadable claim counts as none: claims
    are written atomically, so it can only be a user's edit)."""
    try:
        claim = json.loads((folder / CLAIM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return claim if isinstance(claim, dict) else None


def write_claim(folder: Path, claim: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / CLAIM_FILE, claim)


def release_claim(folder: Path, claim: dict[str, Any]) -> None:
    """Remove the claim of ``folder`` if it is still ``claim`` (not one another command wrote since)."""
    if read_claim(folder) == claim:
        (folder / CLAIM_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def local_claim_alive(claim: dict[str, Any]) -> bool:
    """Whether the local process of ``claim`` (or the worker it started) still runs. A claim of another host
    cannot be checked from here and counts as alive."""
    if claim.get("host") != socket.gethostname():
        return True
    pids = [claim.get("pid"), claim.get("worker_pid")]
    return any(isinstance(p, int) and pid_alive(p) for p in pids)


def describe(claim: dict[str, Any]) -> str:
    """``Slurm job 123_4`` or ``process 42 on host h``, for messages."""
    if claim.get("executor") == "slurm":
        return f"Slurm job {claim.get('job_id')}"
    return f"process {claim.get('pid')} on host {claim.get('host')}"


def claim_run(
    folder: Path, new: dict[str, Any], alive: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """Claim the run in ``folder`` for ``new`` unless a live claim holds it; returns that live claim (the run
    is not ours), or None (claimed). Call it holding :func:`bench_lock`."""
    old = read_claim(folder)
    if old is not None and alive(old):
        return old
    write_claim(folder, new)
    return None
