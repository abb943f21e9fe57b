"""nnU-Net v2 integration: student plans, teacher loading, the ReCo-KD trainer and CLI glue."""

from __future__ import annotations

import os
from pathlib import Path

#: nnU-Net's environment variable listing extra folders to search for trainer classes
EXT_TRAINER_ENV = "nnUNet_extTrainer"


def ext_trainer_dir() -> str:
    """The folder to put in ``nnUNet_extTrainer`` so that stock nnU-Net finds reco-kd's trainers.

    nnU-Net (``nnunetv2.utilities.find_objects``) looks trainer classes up by the name stored in a
    checkpoint (``trainer_name``), first in its own package, then in the folders listed in
    ``nnUNet_extTrainer`` (separated by ``os.pathsep``). This folder holds one small module per
    trainer (``nnUNetTrainerReCoKD``, ``nnUNetTrainerShort`` and their NoDA variants)::

        export nnUNet_extTrainer=$(python -c "import recokd.nnunet as n; print(n.ext_trainer_dir())")
    """
    return str(Path(__file__).resolve().parent / "ext")


def add_ext_trainer_dir_to_env(environ: dict[str, str] | None = None) -> str:
    """Prepend :func:`ext_trainer_dir` to ``nnUNet_extTrainer`` (``os.environ`` by default) unless
    it is listed already; returns the new value. Other folders the user listed are kept."""
    env = os.environ if environ is None else environ
    folder = ext_trainer_dir()
    current = [p for p in env.get(EXT_TRAINER_ENV, "").split(os.pathsep) if p.strip()]
    if not any(os.path.abspath(p) == folder for p in current):
        current.insert(0, folder)
    env[EXT_TRAINER_ENV] = os.pathsep.join(current)
    return env[EXT_TRAINER_ENV]
