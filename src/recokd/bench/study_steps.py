"""The kinds of a study's steps (:mod:`recokd.bench.study`): their fields, checked before anything runs, and
what each does. Every kind skips finished work, so a study resumes when run again.

- ``recokd``: a ``recokd`` sub-command (``args``); ``skip_if`` a path that exists; ``stdout`` to a file or
  ``quiet``; an ``args`` entry ``{first = "GLOB"}`` is the first match of the glob (at run time).
- ``nnunet``: an nnU-Net entry point other than training (``command = "nnUNetv2_plan_and_preprocess"``).
- ``nnunet-train``: stock ``nnUNetv2_train`` with the short trainer without augmentation, its schedule from
  ``RECOKD_SHORT_*``; skipped when ``checkpoint_final.pth`` exists, continued (``--c``) from
  ``checkpoint_latest.pth``; ``t`` trains the student plans of width exponent t (``recokd student-plans``
  first), ``results`` another results root, ``suffix`` a model folder name suffix (trained in a temporary
  results folder, then moved there), ``time_file`` records the training's wall time.
- ``subset``: a dataset of the first ``cases`` training cases of ``source``, preprocessed with the source's
  plans (``nnUNetv2_move_plans_between_datasets``).
- ``bench``: ``recokd bench`` with ``options`` (keys: option names without the leading dashes; ``true``
  for a flag; lists joined with commas, or repeated for repeatable options) after the named ``presets``.
- ``score``: a trained model predicts held-out images (``recokd predict``), ``recokd evaluate`` scores them.
- ``curves``: ``benchmarks/learning_curves.py`` on the fold folders of the matching runs.
- ``int8``: ``benchmarks/int8_accuracy.py`` on trained models (linked under one results root).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recokd.bench.study import COMMON_FIELDS, Step
from recokd.bench.study_run import Context
from recokd.errors import UserError
from recokd.nnunet import layout

_Check = Callable[[Any], bool]


@dataclass(frozen=True)
class Field:
    """A field of a step kind: its check, what it expects (for messages), whether it is required."""

    check: _Check
    expected: str
    required: bool = False


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


STR = Field(lambda v: isinstance(v, str), "a string")
REQ_STR = Field(lambda v: isinstance(v, str) and bool(v), "a non-empty string", True)
INT = Field(_int, "an integer")
REQ_INT = Field(lambda v: _int(v) and v >= 1, "a positive integer", True)
OPT_INT = Field(lambda v: v == "" or _int(v), 'an integer, or "" for none')
BOOL = Field(lambda v: isinstance(v, bool), "a boolean")
STRS = Field(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
ARGS = Field(
    lambda v: (
        isinstance(v, list)
        and all(
            _scalar(x) or (isinstance(x, dict) and list(x) == ["first"] and isinstance(x["first"], str))
            for x in v
        )
    ),
    'a list of arguments (strings, numbers, or {first = "GLOB"})',
    True,
)
TS = Field(
    lambda v: (
        (_int(v) and v >= 1) or (isinstance(v, list) and bool(v) and all(_int(x) and x >= 1 for x in v))
    ),
    "a width exponent >= 1 or a non-empty list of them",
)
MODELS = Field(
    lambda v: isinstance(v, dict) and bool(v) and all(isinstance(x, str) for x in v.values()),
    "a table NAME = model folder",
    True,
)
OPTIONS = Field(lambda v: isinstance(v, dict), "a table of recokd bench options")
PRESETS = Field(lambda v: isinstance(v, dict), "a list of preset names")


@dataclass(frozen=True)
class Kind:
    """A step kind: its fields and the function that runs one entry."""

    fields: dict[str, Field]
    run: Callable[[Step, Context], None]
    check: Callable[[Path, Step], None] | None = None


def check_step(path: Path, step: Step) -> None:
    """Refuse an unknown kind, an unknown, missing or mistyped field (one line naming file and field)."""
    kind = KINDS.get(step.kind)
    if kind is None:
        raise UserError(
            f"{path}: {step.where} field 'kind': unknown kind {step.kind!r}; expected one of "
            f"{', '.join(KINDS)}"
        )
    for name, value in step.fields.items():
        spec = kind.fields.get(name)
        if spec is None:
            raise UserError(
                f"{path}: {step.where}: unknown field {name!r} for kind {step.kind!r}; its fields: "
                f"{', '.join([*kind.fields, *COMMON_FIELDS[3:]])}"
            )
        if not spec.check(value):
            raise UserError(f"{path}: {step.where} field {name!r}: expected {spec.expected}, got {value!r}")
    missing = [n for n, spec in kind.fields.items() if spec.required and n not in step.fields]
    if missing:
        raise UserError(
            f"{path}: {step.where}: missing field {missing[0]!r} ({kind.fields[missing[0]].expected})"
        )
    if kind.check is not None:
        kind.check(path, step)


def _dataset_id(path: Path, step: Step, name: str) -> int:
    parsed = layout.parse_dataset_folder_name(step.fields[name])
    if parsed is None:
        raise UserError(
            f"{path}: {step.where} field {name!r}: expected an nnU-Net dataset folder name "
            f"DatasetXXX_Name, got {step.fields[name]!r}"
        )
    return parsed[0]


def _args(values: list[Any], glob_first: bool) -> list[str]:
    out = []
    for v in values:
        if isinstance(v, dict):
            pattern = Path(v["first"])
            matches = sorted(pattern.parent.glob(pattern.name)) if glob_first else []
            if glob_first and not matches:
                raise UserError(f"no file matches {pattern}")
            out.append(str(matches[0]) if matches else str(pattern))
        else:
            out.append(str(v))
    return out


# ---------------------------------------------------------------------------- recokd, nnunet


def run_recokd(step: Step, ctx: Context) -> None:
    """A ``recokd`` sub-command, unless ``skip_if`` exists."""
    f = step.fields
    if f.get("skip_if") and Path(f["skip_if"]).exists():
        return
    argv = [ctx.entry_point("recokd"), *_args(f["args"], not ctx.dry_run)]
    ctx.run(step, argv, stdout=Path(f["stdout"]) if f.get("stdout") else None, quiet=f.get("quiet", False))


def run_nnunet(step: Step, ctx: Context) -> None:
    """An nnU-Net entry point (planning, preprocessing), unless ``skip_if`` exists."""
    f = step.fields
    if f.get("skip_if") and Path(f["skip_if"]).exists():
        return
    ctx.run(step, [ctx.entry_point(f["command"]), *_args(f["args"], not ctx.dry_run)])


def _check_nnunet(path: Path, step: Step) -> None:
    command = step.fields["command"]
    if not command.startswith("nnUNetv2_") or command == "nnUNetv2_train":
        raise UserError(
            f"{path}: {step.where} field 'command': expected an nnU-Net entry point nnUNetv2_* "
            f"(training: kind 'nnunet-train'), got {command!r}"
        )


# ---------------------------------------------------------------------------- nnunet-train

#: ``nnUNetv2_train`` with torch's threads set to N (it sets them to every core on the CPU)
_THREADS = (
    "import multiprocessing, sys; n = int(sys.argv.pop(1)); multiprocessing.cpu_count = lambda: n; "
    "from nnunetv2.run.run_training import run_training_entry; run_training_entry()"
)


def train_plans(step: Step) -> list[str]:
    """The plans identifiers an ``nnunet-train`` entry trains, in order."""
    f = step.fields
    plans = f.get("plans", "nnUNetPlans")
    if "t" not in f:
        return [plans]
    from recokd.nnunet.plans import student_plans_identifier

    ts = f["t"] if isinstance(f["t"], list) else [f["t"]]
    return [student_plans_identifier(plans, t) for t in ts]


def _check_train(path: Path, step: Step) -> None:
    _dataset_id(path, step, "dataset")
    optimizer = step.fields.get("optimizer", "")
    if optimizer:
        from recokd.nnunet.optim import OPTIMIZER_NAMES

        if optimizer not in OPTIMIZER_NAMES:
            raise UserError(
                f"{path}: {step.where} field 'optimizer': expected one of "
                f"{', '.join(OPTIMIZER_NAMES)}, got {optimizer!r}"
            )


def run_train(step: Step, ctx: Context) -> None:
    """Stock nnU-Net training of each plans (:func:`train_plans`), resumable. With ``drop_optimizer_state``,
    each final checkpoint then keeps only what inference reads (:func:`drop_training_state` of
    ``recokd.nnunet.trained_model``), so that a teacher can be committed."""
    f = step.fields
    dataset, configuration = f["dataset"], f.get("configuration", "3d_fullres")
    did = layout.parse_dataset_folder_name(dataset)[0]
    results = Path(f.get("results") or ctx.study.data / "nnUNet_results")
    suffix = f.get("suffix", "")
    ts = f["t"] if isinstance(f.get("t"), list) else [f.get("t")]
    for t, plans in zip(ts, train_plans(step), strict=True):
        if t is not None:
            ctx.run(
                step,
                [ctx.entry_point("recokd"), "student-plans", str(did), "-c", configuration, "-t", str(t)],
                quiet=True,
            )
        model = layout.model_folder(results, dataset, layout.SHORT_TRAINER_NO_DA, plans, configuration)
        fold = Path(f"{model}{suffix}") / layout.fold_folder_name(f.get("fold", 0))
        if not (fold / layout.CHECKPOINT_FINAL).is_file():
            _train_one(step, ctx, did, plans, configuration, fold, results)
        if f.get("drop_optimizer_state") and not ctx.dry_run:
            from recokd.nnunet.trained_model import drop_training_state

            final = fold / layout.CHECKPOINT_FINAL
            if drop_training_state(final):
                print(f"{ctx.show(str(final))}: the optimiser state dropped", file=sys.stderr)


def _train_one(
    step: Step, ctx: Context, did: int, plans: str, configuration: str, fold: Path, results: Path
) -> None:
    """``nnUNetv2_train`` of one plans into ``fold`` (with ``--c`` where a latest checkpoint exists)."""
    f = step.fields
    dataset, suffix = f["dataset"], f.get("suffix", "")
    env = {
        layout.SHORT_EPOCHS_ENV: str(f["epochs"]),
        layout.SHORT_ITERS_ENV: str(f["iters"]),
        layout.SHORT_VAL_ITERS_ENV: str(f["val_iters"]),
        layout.SEED_ENV: str(f.get("seed", 0)),
    }
    if f.get("optimizer"):
        env[layout.SHORT_OPTIMIZER_ENV] = f["optimizer"]
    if f.get("save_every", "") != "":
        env[layout.SHORT_SAVE_EVERY_ENV] = str(f["save_every"])
    command = [ctx.entry_point("nnUNetv2_train")]
    if f.get("threads", "") != "":
        command = [sys.executable, "-c", _THREADS, str(f["threads"])]
    argv = [
        *command,
        str(did),
        configuration,
        str(f.get("fold", 0)),
        "-tr",
        layout.SHORT_TRAINER_NO_DA,
        "-p",
        plans,
        "-device",
        f.get("device", "cpu"),
    ]
    if not suffix and (fold / layout.CHECKPOINT_LATEST).is_file():
        argv.append("--c")
    start = time.monotonic()
    if suffix:  # trained in a results folder of its own, then moved to the suffixed model folder
        with tempfile.TemporaryDirectory() as tmp:
            ctx.run(step, argv, {"nnUNet_results": tmp, **env}, training=True)
            if not ctx.dry_run:
                trained = layout.model_folder(
                    tmp, dataset, layout.SHORT_TRAINER_NO_DA, plans, configuration
                )
                fold.parent.mkdir(parents=True, exist_ok=True)
                for file in trained.glob("*.json"):
                    shutil.copy2(file, fold.parent / file.name)
                shutil.move(str(trained / fold.name), str(fold))
    else:
        ctx.run(
            step,
            argv,
            {**({"nnUNet_results": str(results)} if "results" in f else {}), **env},
            training=True,
        )
    if f.get("time_file") and not ctx.dry_run:
        out = Path(f["time_file"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            f"nnUNetv2_train wall time: {round(time.monotonic() - start)} s ({f['epochs']} epochs "
            f"x {f['iters']} iterations)\n",
            encoding="utf-8",
        )


# ---------------------------------------------------------------------------- subset


def run_subset(step: Step, ctx: Context) -> None:
    """``target``: the first ``cases`` training cases of ``source`` (and all its test cases), planned with the
    source's plans, preprocessed; each part skipped when done."""
    f = step.fields
    raw = ctx.study.data / "nnUNet_raw"
    pre = ctx.study.data / "nnUNet_preprocessed"
    source, target = raw / f["source"], raw / f["target"]
    plans, configuration = f.get("plans", "nnUNetPlans"), f.get("configuration", "3d_fullres")
    sid, tid = (str(layout.parse_dataset_folder_name(f[k])[0]) for k in ("source", "target"))
    if not (target / "dataset.json").is_file():
        print(
            f"+ (copy the first {f['cases']} training cases and the test cases of {f['source']} into "
            f"{ctx.show(str(target))})",
            file=sys.stderr,
            flush=True,
        )
        if not ctx.dry_run:
            _copy_subset(source, target, f["cases"], layout.parse_dataset_folder_name(f["target"])[1])
    done = pre / f["target"] / f"{plans}_{configuration}"
    if done.is_dir() and any(done.iterdir()):
        return
    ctx.run(
        step,
        [
            ctx.entry_point("nnUNetv2_extract_fingerprint"),
            "-d",
            tid,
            "-np",
            "1",
            "--verify_dataset_integrity",
        ],
    )
    ctx.run(
        step,
        [
            ctx.entry_point("nnUNetv2_move_plans_between_datasets"),
            "-s",
            sid,
            "-t",
            tid,
            "-sp",
            plans,
            "-tp",
            plans,
        ],
    )
    if not ctx.dry_run:  # as nnU-Net's planner does
        shutil.copy2(target / "dataset.json", pre / f["target"] / "dataset.json")
    ctx.run(
        step,
        [
            ctx.entry_point("nnUNetv2_preprocess"),
            "-d",
            tid,
            "-plans_name",
            plans,
            "-c",
            configuration,
            "-np",
            "1",
        ],
    )


def _copy_subset(source: Path, target: Path, cases: int, name: str) -> None:
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(parents=True, exist_ok=True)
    meta = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    ending = meta["file_ending"]
    for label in sorted((source / "labelsTr").glob(f"*{ending}"))[:cases]:
        case = label.name[: -len(ending)]
        shutil.copy2(label, target / "labelsTr" / label.name)
        for image in sorted((source / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}")):
            shutil.copy2(image, target / "imagesTr" / image.name)
    for folder in ("imagesTs", "labelsTs"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, target / folder, dirs_exist_ok=True)
    meta.update(numTraining=cases, name=name)
    (target / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


# ---------------------------------------------------------------------------- bench


def bench_actions() -> dict[str, argparse.Action]:
    """``recokd bench``'s options by their name without leading dashes (``seed-list``, ``t``)."""
    from recokd.bench.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    bench = parser._subparsers._group_actions[0].choices["bench"]  # type: ignore[union-attr]
    return {s.lstrip("-"): a for a in bench._actions for s in a.option_strings if a.dest != "help"}


def bench_options(step: Step) -> dict[str, Any]:
    """The entry's ``recokd bench`` options: its presets in order, then its own ``options`` and ``output``."""
    merged: dict[str, Any] = {}
    for preset in step.fields.get("presets", {}).values():
        merged.update(preset)
    merged.update(step.fields.get("options", {}))
    merged["output"] = step.fields["output"]
    return merged


def bench_argv(step: Step, actions: dict[str, argparse.Action] | None = None) -> list[str]:
    """``recokd bench``'s arguments (without the command) of a ``bench`` entry."""
    actions = actions or bench_actions()
    argv: list[str] = []
    for key, value in bench_options(step).items():
        action = actions[key]
        flag = f"-{key}" if len(key) == 1 else f"--{key}"
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, list) and isinstance(action, argparse._AppendAction):
            for v in value:
                argv += [flag, str(v)]
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            argv += [flag, *(str(v) for v in value)]
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def _check_bench(path: Path, step: Step) -> None:
    actions = bench_actions()
    for key, value in bench_options(step).items():
        action = actions.get(key)
        if action is None or key == "o":
            raise UserError(
                f"{path}: {step.where} field 'options': unknown recokd bench option {key!r} (keys "
                "are the option names without dashes, e.g. seed-list; -o is the field 'output')"
            )
        is_flag = action.nargs == 0
        if is_flag != isinstance(value, bool) or not (_scalar(value) or isinstance(value, (bool, list))):
            raise UserError(
                f"{path}: {step.where} option {key!r}: expected "
                f"{'true or false' if is_flag else 'a value or a list'}, got {value!r}"
            )


def run_bench(step: Step, ctx: Context) -> None:
    """``recokd bench`` (it resumes by itself: finished runs are kept); with ``ctx.report_only`` its
    ``--report-only`` report of the runs finished so far, where the bench has begun."""
    argv = [ctx.entry_point("recokd"), "bench", *bench_argv(step)]
    if ctx.report_only:
        from recokd.bench.config import CONFIG_FILE

        if not (Path(step.fields["output"]) / CONFIG_FILE).is_file():
            print(f"   ({step.where} skipped: no bench in {ctx.show(step.fields['output'])} yet)",
                  file=sys.stderr, flush=True)
            return
        argv.append("--report-only")
    ctx.run(step, argv)


# ---------------------------------------------------------------------------- score


def run_score(step: Step, ctx: Context) -> None:
    """A trained model (``model``: nnU-Net's Dataset/Trainer__Plans__Configuration folder, fold ``fold``)
    predicts ``images`` into ``predictions`` with ``recokd predict`` (no test-time mirroring; skipped when
    that folder exists), then ``recokd evaluate`` scores them against ``labels`` into ``output``
    (summary.json, per-case CSV) and ``output``.txt (the table)."""
    f = step.fields
    model = Path(f["model"])
    parts = layout.parse_model_folder_name(model.name)
    assert parts is not None  # checked by _check_score
    fold = f.get("fold", 0)
    if not (model / layout.fold_folder_name(fold) / layout.CHECKPOINT_FINAL).is_file() and not ctx.dry_run:
        raise UserError(f"{ctx.study.path}: {step.where} field 'model': {model} has no finished fold "
                        f"{fold} ({layout.CHECKPOINT_FINAL}): train it first")
    predictions, output = Path(f["predictions"]), Path(f["output"])
    # paths under the current directory passed relative to it (the commands run there), so that the
    # written report names no machine's folders
    images, labels, pred = ctx.show(f["images"]), ctx.show(f["labels"]), ctx.show(str(predictions))
    if not predictions.exists():
        ctx.run(step, [ctx.entry_point("recokd"), "predict", "-i", images, "-o", pred,
                       "-d", model.parent.name, "-c", parts.configuration, "-f", str(fold),
                       "-tr", parts.trainer, "-p", parts.plans, "--device", "cpu", "--disable-tta",
                       "-npp", "0", "-nps", "0"],
                env={"nnUNet_results": str(model.parent.parent)})
    ctx.run(step, [ctx.entry_point("recokd"), "evaluate", pred, labels, "--dataset-json",
                   ctx.show(str(model / "dataset.json")), "-o", ctx.show(str(output)), "--overwrite"],
            stdout=output.with_name(output.name + ".txt"))


def _check_score(path: Path, step: Step) -> None:
    if layout.parse_model_folder_name(Path(step.fields["model"]).name) is None:
        raise UserError(f"{path}: {step.where} field 'model': expected nnU-Net's model folder "
                        f"Trainer__Plans__Configuration, got {step.fields['model']!r}")


# ---------------------------------------------------------------------------- curves, int8


def _script(ctx: Context, name: str) -> str:
    path = ctx.cwd / "benchmarks" / name
    if not path.is_file():
        raise UserError(f"{path} does not exist: run studies from the clone's root")
    return str(path)


def run_curves(step: Step, ctx: Context) -> None:
    """``benchmarks/learning_curves.py`` on every matching fold folder, into ``output`` .csv / .png / .txt."""
    f = step.fields
    first = Path(f.get("results") or ctx.study.data / "nnUNet_results")
    roots = [first, *map(Path, f.get("also_results", []))]
    name = layout.model_folder_name(
        layout.SHORT_TRAINER_NO_DA,
        f.get("plans", "nnUNetPlans*"),
        f.get("configuration", "3d_fullres") + f.get("suffix", ""),
    )
    pattern = f"{name}/{layout.fold_folder_name(0)}"
    folds = [str(p) for root in roots for p in sorted((root / f["dataset"]).glob(pattern)) if p.is_dir()]
    if not folds and not ctx.dry_run:
        raise UserError(
            f"{ctx.study.path}: {step.where}: no trained run matches {roots[0] / f['dataset'] / pattern}"
        )
    out = f["output"]
    argv = [
        sys.executable,
        _script(ctx, "learning_curves.py"),
        *(folds or [str(roots[0] / f["dataset"] / pattern)]),
        "--iters-per-epoch",
        str(f["iters"]),
        "--every",
        str(f["every"]),
    ]
    if f.get("labels_from"):
        labels = Path(f["labels_from"])
        if labels.is_file():
            names = json.loads(labels.read_text(encoding="utf-8"))["labels"]
            argv += ["--labels", ",".join(k for k, v in sorted(names.items(), key=lambda kv: kv[1]) if v)]
        elif not ctx.dry_run:
            raise UserError(f"{ctx.study.path}: {step.where} field 'labels_from': {labels} does not exist")
    if f.get("small"):
        argv += ["--small", ",".join(f["small"])]
    argv += ["--csv", f"{out}.csv", "--plot", f"{out}.png"]
    ctx.run(step, argv, stdout=Path(f"{out}.txt"))


def run_int8(step: Step, ctx: Context) -> None:
    """``benchmarks/int8_accuracy.py`` on ``models``, linked under one results root (``{data}/int8_models``),
    where ``recokd predict`` finds them by dataset / trainer / plans / configuration; its report copied to
    ``copy_to``."""
    f = step.fields
    dataset, configuration = f["dataset"], f.get("configuration", "3d_fullres")
    root = ctx.study.data / "int8_models"
    pre, raw = ctx.study.data / "nnUNet_preprocessed" / dataset, ctx.study.data / "nnUNet_raw" / dataset
    models = []
    for label, folder in f["models"].items():
        model = Path(folder)
        parts = layout.parse_model_folder_name(model.name)
        if parts is None:
            raise UserError(
                f"{ctx.study.path}: {step.where} field 'models': {label} = {folder} is not an "
                "nnU-Net model folder Trainer__Plans__Configuration"
            )
        link = root / dataset / layout.model_folder_name(parts.trainer, parts.plans, configuration)
        if not ctx.dry_run:  # folders trained by an older adam-students lack plans.json / dataset.json
            for name, source in (
                ("plans.json", pre / f"{parts.plans}.json"),
                ("dataset.json", pre / "dataset.json"),
            ):
                if not (model / name).is_file():
                    shutil.copy2(source, model / name)
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(model)
        models.append(f"{label}={link}")
    out = Path(f["output"])
    ctx.run(
        step,
        [
            sys.executable,
            _script(ctx, "int8_accuracy.py"),
            "-d",
            str(_dataset_id(ctx.study.path, step, "dataset")),
            "-i",
            f["images"],
            "-l",
            f["labels"],
            "--dataset-json",
            str(raw / "dataset.json"),
            "-o",
            str(out),
            "--calibration-cases",
            str(f["calibration_cases"]),
            *models,
        ],
        {"nnUNet_results": str(root)},
    )
    if f.get("copy_to") and not ctx.dry_run:
        Path(f["copy_to"]).mkdir(parents=True, exist_ok=True)
        for name in ("int8_accuracy.md", "int8_accuracy.json"):
            shutil.copy2(out / name, Path(f["copy_to"]) / name)


def _check_subset(path: Path, step: Step) -> None:
    _dataset_id(path, step, "source")
    _dataset_id(path, step, "target")


def _check_int8(path: Path, step: Step) -> None:
    _dataset_id(path, step, "dataset")


_TRAIN_FIELDS = {
    "dataset": REQ_STR,
    "configuration": STR,
    "fold": INT,
    "plans": STR,
    "t": TS,
    "epochs": REQ_INT,
    "iters": REQ_INT,
    "val_iters": REQ_INT,
    "seed": INT,
    "optimizer": STR,
    "save_every": OPT_INT,
    "threads": OPT_INT,
    "drop_optimizer_state": BOOL,  # keep only what inference needs in checkpoint_final.pth (to commit it)
    "results": STR,
    "suffix": STR,
    "time_file": STR,
    "device": STR,
}

#: the step kinds, by their name in a study file
KINDS: dict[str, Kind] = {
    "recokd": Kind({"args": ARGS, "skip_if": STR, "stdout": STR, "quiet": BOOL}, run_recokd),
    "nnunet": Kind({"command": REQ_STR, "args": ARGS, "skip_if": STR}, run_nnunet, _check_nnunet),
    "nnunet-train": Kind(_TRAIN_FIELDS, run_train, _check_train),
    "subset": Kind(
        {"source": REQ_STR, "target": REQ_STR, "cases": REQ_INT, "plans": STR, "configuration": STR},
        run_subset,
        _check_subset,
    ),
    "bench": Kind({"output": REQ_STR, "presets": PRESETS, "options": OPTIONS}, run_bench, _check_bench),
    "curves": Kind(
        {
            "dataset": REQ_STR,
            "results": STR,
            "also_results": STRS,  # more results folders (e.g. a run's variant trained apart), after it
            "plans": STR,
            "configuration": STR,
            "suffix": STR,
            "iters": REQ_INT,
            "every": REQ_INT,
            "labels_from": STR,
            "small": STRS,
            "output": REQ_STR,
        },
        run_curves,
    ),
    "score": Kind(
        {"model": REQ_STR, "fold": INT, "images": REQ_STR, "labels": REQ_STR, "predictions": REQ_STR,
         "output": REQ_STR},
        run_score,
        _check_score,
    ),
    "int8": Kind(
        {
            "dataset": REQ_STR,
            "configuration": STR,
            "models": MODELS,
            "images": REQ_STR,
            "labels": REQ_STR,
            "output": REQ_STR,
            "calibration_cases": REQ_INT,
            "copy_to": STR,
        },
        run_int8,
        _check_int8,
    ),
}


def run_steps(ctx: Context, steps: list[Step]) -> None:
    """Run the entries in order: the ``about`` line of each step once, entries whose ``only_if`` is "" and
    refused ones (a ``needs`` path missing) reported; with ``ctx.report_only`` the bench entries only."""
    announced: set[str] = set()
    for step in steps:
        if ctx.report_only and step.kind != "bench":  # --report-only: the benches' reports only
            continue
        if step.name not in announced:
            announced.add(step.name)
            print(f"== {step.name}: {step.about}", file=sys.stderr, flush=True)
        if step.only_if is not None and not step.only_if.strip():
            print(f"   ({step.where} skipped: its only_if is empty)", file=sys.stderr, flush=True)
            continue
        for needed, paths in step.needs.items():
            missing = [p for p in paths if not Path(p).exists()]
            if missing and not ctx.dry_run:
                raise UserError(
                    f"{ctx.study.path}: {step.where} needs {', '.join(missing)}: run the step "
                    f"{needed!r} first"
                )
        KINDS[step.kind].run(step, ctx)
