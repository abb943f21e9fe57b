"""The ``recokd`` command.

Every sub-command lives in its own module, which exposes ``register(subparsers)``: it adds its
parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an
exit code). Command modules keep heavy imports (torch, nnunetv2) inside their ``func`` so that
``recokd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from recokd import __version__
from recokd.errors import UserError

#: modules that provide sub-commands, in the order ``recokd --help`` lists them
COMMAND_MODULES: tuple[str, ...] = (
    "recokd.demo",
    "recokd.bench",
    "recokd.bench.study_cli",
    "recokd.data.cli",
    "recokd.data.atlas_cli",
    "recokd.nnunet.plans_cli",
    "recokd.nnunet.cli",
    "recokd.nnunet.pseudo_label_cli",
    "recokd.nnunet.distil_cli",
    "recokd.deploy.predict_cli",
    "recokd.evaluation.cli",
    "recokd.methods_cli",
    "recokd.evaluation.profile_cli",
    "recokd.deploy.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recokd",
        description="ReCo-KD: distil a large nnU-Net teacher into a small, fast student.",
    )
    parser.add_argument("--version", action="version", version=f"reco-kd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        from recokd.nnunet.versions import check_nnunet_version

        check_nnunet_version()
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at exit
        return code
    except UserError as e:
        print(f"recokd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        resume = getattr(args, "resume_command", None)
        if resume is not None:
            print(f"continue from the last checkpoint with: {resume(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (``recokd methods | head``): stop quietly
        _silence_stdout()
        return 1
    except Exception as e:  # a full disk met where no command named its folder: still one line
        from recokd.atomic_files import DiskFullError, is_disk_full

        if not is_disk_full(e):
            raise
        print(f"recokd {args.command}: error: {DiskFullError.of(e)}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's final flush of what is still buffered
    for the closed pipe raises no second ``BrokenPipeError`` (the recipe of Python's ``signal`` docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (e.g. replaced in tests)
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
