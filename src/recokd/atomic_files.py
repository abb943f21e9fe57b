"""Files written so that no reader ever trusts half of one, and a full disk said in one line.

Every file reco-kd writes for a user (segmentations, exported models, reports, JSON records) goes
through :func:`atomic_paths`: the writer gets a *partial* name in the target's own folder
(``.recokd-partial-<pid>-<name>``: hidden, the target's name kept at the end so that writers that
choose the format by extension, such as SimpleITK, nibabel or matplotlib, still do), and the
partial file is renamed onto the target (``os.replace``, atomic within one file system) only once
the writer returned. A run killed while writing therefore leaves either the previous file or no
file at the target, never a truncated one (``--continue-prediction`` and ``--c`` trust what
exists), plus at most a hidden partial file that :func:`remove_stale_partials` deletes later.

A full disk (``ENOSPC``, or a quota: ``EDQUOT``) becomes :class:`DiskFullError`, a one-line
:class:`~recokd.errors.UserError` naming the folder. Libraries that write without an ``errno``
(``torch.save``'s ``PytorchStreamWriter failed writing file``, OpenVINO's ``basic_ios::clear:
iostream error``) are recognised by :func:`looks_full`: the folder's file system has less than
:data:`FULL_BELOW` bytes free when the write failed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from recokd.errors import UserError

#: name prefix of partial files (hidden: nnU-Net's and our file listings skip them)
PARTIAL_PREFIX = ".recokd-partial-"
_PARTIAL = re.compile(re.escape(PARTIAL_PREFIX) + r"(?P<pid>\d+)-")
#: errno values that mean "no room left"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: a write that failed without an errno counts as "disk full" when less than this is free (1 MiB)
FULL_BELOW = 1 << 20


class DiskFullError(UserError):
    """A write failed because the file system of ``folder`` is full (one line, names the folder)."""

    def __init__(self, folder: str | Path | None):
        self.folder = None if folder is None else Path(folder)
        where = "a disk this command writes to" if folder is None else f"the disk holding {self.folder}"
        super().__init__(f"no space left on device: {where} is full; free some space and run the command "
                         "again (nothing half-written was kept)")

    @classmethod
    def of(cls, error: BaseException) -> DiskFullError:
        """The :class:`DiskFullError` of a full-disk ``error`` (see :func:`is_disk_full`): the folder
        of the first file name found in its chain, if any."""
        for e in _chain(error):
            if isinstance(e, DiskFullError):
                return e
            if isinstance(e, OSError) and e.filename:
                return cls(Path(os.fsdecode(e.filename)).parent)
        return cls(None)

    def __reduce__(self):  # raised in nnU-Net's export workers, pickled back to the main process
        return (type(self), (self.folder,))


def partial_path(path: str | Path) -> Path:
    """The partial name of ``path``: same folder, ``.recokd-partial-<pid>-<name>``."""
    path = Path(path)
    return path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{path.name}")


def is_partial(name: str) -> bool:
    """Whether a file name is a partial file of :func:`partial_path`."""
    return _PARTIAL.match(name) is not None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, nearest first."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` or any exception it was raised from (``__cause__``/``__context__``) is a
    full disk: :class:`DiskFullError` or an ``OSError`` with errno ``ENOSPC``/``EDQUOT``."""
    return any(isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS)
               for e in _chain(error))


def looks_full(folder: str | Path) -> bool:
    """Whether the file system of ``folder`` (or its nearest existing parent) has less than
    :data:`FULL_BELOW` bytes free: how a failed write without an errno is recognised as a full disk."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return False


@contextlib.contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield the partial names of ``paths`` to write to; when the block ends without an error they
    are renamed onto ``paths`` in the order given (put the file that marks completion last), else
    removed. A full disk raises :class:`DiskFullError` naming the first path's folder."""
    targets = [Path(p) for p in paths]
    partials = [partial_path(p) for p in targets]
    try:
        yield partials
        for partial, target in zip(partials, targets, strict=True):
            os.replace(partial, target)
    except UserError:
        raise
    except Exception as e:
        folder = targets[0].parent if targets else Path.cwd()
        if is_disk_full(e) or (isinstance(e, OSError | RuntimeError) and looks_full(folder)):
            raise DiskFullError(folder) from None
        raise
    finally:
        for partial in partials:
            with contextlib.suppress(OSError):  # renamed already, never written, or not ours to remove
                partial.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """:func:`atomic_paths` for one file: yields the partial name to write ``path`` under."""
    with atomic_paths(path) as (partial,):
        yield partial


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a partial file; returns the path."""
    path = Path(path)
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def writing_into(folder: str | Path) -> Iterator[None]:
    """Turn a full disk met in the block (an ``OSError`` ENOSPC anywhere in an exception's chain, as
    nnU-Net's writers and worker pools raise it) into a :class:`DiskFullError` naming ``folder``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise DiskFullError(folder) from None
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Delete the partial files in ``folder`` left by processes that no longer run (a killed run);
    returns them. Partial files of running processes (a concurrent writer) are kept."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _PARTIAL.match(p.name)
        if m and p.is_file() and not _alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
