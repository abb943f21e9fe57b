"""The ``recokd study`` command: run a study file's steps (:mod:`recokd.bench.study`), resumable."""

from __future__ import annotations

import argparse
import sys

from recokd.errors import UserError


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tiny",
        action="store_true",
        help="apply the file's [tiny] table: every count and length at its minimum (the figures mean "
        "nothing; for tests)",
    )
    p.add_argument(
        "--folder",
        metavar="DIR",
        default=None,
        help="the study folder (default: the file's [study] folder, relative to the current directory)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a variable of the file's [vars], repeatable (VALUE as TOML, else text), e.g. "
        "--set few_weight=:10 --set seeds=5",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="the bench steps only, each as recokd bench --report-only: the report of the runs finished so "
        "far, no run started (the other steps are skipped, and so are benches not begun)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the steps with what each does, and stop")
    what.add_argument(
        "--env",
        action="store_true",
        help="print the study's nnU-Net environment as export lines (eval \"$(recokd study FILE "
        '--env)"), and stop',
    )
    what.add_argument(
        "--dry-run",
        action="store_true",
        help="print the commands the steps would run now, without running them",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``study`` sub-command."""
    p = subparsers.add_parser(
        "study",
        help="run the steps of a study file (benchmarks/studies/*.toml): data, teachers, benches (resumable)",
        description=(
            "Run the steps of a study file in order: datasets, nnU-Net planning and training, recokd bench "
            "runs, curves. Every step skips what is finished, so the same command again continues the study. "
            "Each command is printed (+ recokd bench ...) before it runs."
        ),
    )
    p.add_argument(
        "file", metavar="FILE", help="the study file (TOML), e.g. benchmarks/studies/evidence.toml"
    )
    p.add_argument(
        "steps",
        nargs=argparse.REMAINDER,
        metavar="STEP",
        help="steps to run, in the file's order whatever the order given (default: the file's default "
        "steps; see --list); options may follow them",
    )
    _add_options(p)
    p.set_defaults(func=_run)


def parse_rest(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the steps and the options given after FILE (argparse leaves them in ``steps``) parsed."""
    inner = argparse.ArgumentParser(prog="recokd study FILE")
    inner.add_argument("steps", nargs="*")
    _add_options(inner)
    rest = inner.parse_intermixed_args(args.steps)
    return argparse.Namespace(
        file=args.file,
        steps=rest.steps,
        tiny=args.tiny or rest.tiny,
        folder=rest.folder or args.folder,
        sets=[*args.sets, *rest.sets],
        list=args.list or rest.list,
        env=args.env or rest.env,
        dry_run=args.dry_run or rest.dry_run,
        report_only=args.report_only or rest.report_only,
    )


def _run(args: argparse.Namespace) -> int:
    from recokd.bench.study import load_study
    from recokd.bench.study_run import Context, export_lines
    from recokd.bench.study_steps import run_steps

    args = parse_rest(args)
    if sum((args.list, args.env, args.dry_run)) > 1:
        raise UserError("--list, --env and --dry-run exclude each other")
    study = load_study(args.file, tiny=args.tiny, sets=args.sets, folder=args.folder)
    steps = study.select(args.steps)
    if args.env:
        print(export_lines(study))
        return 0
    if args.list:
        default = set(study.default_steps())
        print(study.description)
        for name in study.step_names():
            about = next(s.about for s in study.steps if s.name == name)
            print(f"  {name:<16} {about}{'' if name in default else '  (not run by default)'}")
        return 0
    if not args.dry_run:
        study.folder.mkdir(parents=True, exist_ok=True)
        if study.gitignore:
            (study.folder / ".gitignore").write_text("".join(f"{line}\n" for line in study.gitignore))
    print(
        f"study {args.file}: folder {study.folder}; steps {', '.join(dict.fromkeys(s.name for s in steps))}",
        file=sys.stderr,
        flush=True,
    )
    run_steps(Context(study, dry_run=args.dry_run, report_only=args.report_only), steps)
    return 0
