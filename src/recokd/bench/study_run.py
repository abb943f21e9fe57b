"""Running a study's commands: the study's nnU-Net environment, the printed record (``+ recokd bench ...``)
and the subprocess, or only the record (``--dry-run``)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from recokd.bench.study import Step, StudyFile
from recokd.errors import UserError

#: nnU-Net's settings of every command of a study (training adds :data:`TRAINING_ENV`)
BASE_ENV = {
    "nnUNet_def_n_proc": "1",
    "nnUNet_compile": "0",
    "nnUNet_wandb_enabled": "0",
    "PYTHONWARNINGS": "ignore::FutureWarning",
}
#: training only: augmentation in the main process (nnU-Net's planner crashes with it)
TRAINING_ENV = {"nnUNet_n_proc_DA": "0"}


def nnunet_environment(study: StudyFile) -> dict[str, str]:
    """nnU-Net's folders under the study's data folder, reco-kd's trainers, and the file's ``[env]``."""
    from recokd.nnunet import ext_trainer_dir

    data = study.data
    return {
        "nnUNet_raw": str(data / "nnUNet_raw"),
        "nnUNet_preprocessed": str(data / "nnUNet_preprocessed"),
        "nnUNet_results": str(data / "nnUNet_results"),
        "nnUNet_extTrainer": ext_trainer_dir(),
        **study.env,
    }


def export_lines(study: StudyFile) -> str:
    """``export NAME=VALUE ...``: the study's environment for ``eval "$(recokd study FILE --env)"``."""
    env = nnunet_environment(study)
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


@dataclass
class Context:
    """Where a study runs: its file, the current directory (paths under it are printed relative to it), the
    folder of the ``recokd`` / nnU-Net entry points, whether commands only print, and whether only the bench
    steps' reports are written (``recokd study --report-only``)."""

    study: StudyFile
    dry_run: bool = False
    report_only: bool = False
    cwd: Path = field(default_factory=Path.cwd)
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)

    def entry_point(self, name: str) -> str:
        """The console script ``name`` (``recokd``, ``nnUNetv2_train``) next to this Python."""
        return str(self.bin_dir / name)

    def show(self, text: str) -> str:
        """``text`` with a leading path under the current directory made relative, entry points by name."""
        for prefix in (f"{self.bin_dir}{os.sep}", f"{self.cwd}{os.sep}"):
            if text.startswith(prefix):
                return text[len(prefix) :]
        name, eq, value = text.partition("=")
        if eq and name.isidentifier() and value != self.show(value):
            return f"{name}={self.show(value)}"
        return text

    def record(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        """The line a command is printed as: ``+ [VAR=VALUE ...] COMMAND ARGS...``."""
        shown = [self.show(f"{k}={v}") for k, v in (env or {}).items()]
        if argv and argv[0] == sys.executable:
            shown.append("python")
            argv = argv[1:]
        return "+ " + " ".join(
            shlex.quote(self.show(a)) if " " in a else self.show(a) for a in [*shown, *argv]
        )

    def run(
        self,
        step: Step,
        argv: list[str],
        env: dict[str, str] | None = None,
        training: bool = False,
        stdout: Path | None = None,
        quiet: bool = False,
    ) -> None:
        """Print and run ``argv`` in the study's environment (+ the entry's ``env``, then ``env``;
        ``training``: with :data:`TRAINING_ENV`); its output to ``stdout`` (a file) or nowhere (``quiet``).
        A failed command stops the study with a :class:`UserError`."""
        extra = {**step.env, **(env or {})}
        line = self.record(argv, extra)
        if stdout is not None:
            line += f" > {self.show(str(stdout))}"
        print(line, file=sys.stderr, flush=True)
        if self.dry_run:
            return
        full = {
            **os.environ,
            **BASE_ENV,
            **nnunet_environment(self.study),
            **(TRAINING_ENV if training else {}),
            **extra,
        }
        if stdout is not None:
            stdout.parent.mkdir(parents=True, exist_ok=True)
            with stdout.open("w", encoding="utf-8") as out:
                code = subprocess.run(argv, env=full, cwd=self.cwd, stdout=out).returncode
        else:
            code = subprocess.run(
                argv, env=full, cwd=self.cwd, stdout=subprocess.DEVNULL if quiet else None
            ).returncode
        if code != 0:
            raise UserError(f"{self.study.path}: {step.where}: `{line[2:]}` exited with status {code}")
