"""Where a new nnU-Net raw dataset ``<raw>/DatasetXXX_Name`` may be written, checked before anything is.

nnU-Net finds a dataset by its id in ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
(``maybe_convert_to_dataset_name`` fails when one id has several names), so a new dataset must not reuse
the id of another one; a folder of the same name is only replaced with an explicit ``overwrite``.
Writers build the dataset in :func:`temporary_sibling` and move it into place when complete
(:func:`move_into_place`), so that a killed run never leaves a dataset that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

from recokd.errors import UserError
from recokd.nnunet.layout import dataset_folder_name


def existing_with_id(folder: Path, dataset_id: int) -> list[Path]:
    """Directories ``Dataset{id:03d}_*`` in ``folder`` (empty if ``folder`` does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(dataset_folder_name(dataset_id, "*")) if p.is_dir())


def check_dataset_destination(raw: Path, dataset_id: int, name: str, overwrite: bool, flag: str = "dataset_id"
                              ) -> Path:
    """``<raw>/Dataset{id:03d}_{name}``, after checking that it may be written.

    Refuses (``UserError``, ``flag`` naming the option) when ``raw`` holds another folder with the same id
    (never touched, even with ``overwrite``), or the target exists and ``overwrite`` is not set (or is not
    a folder). Warns when ``nnUNet_preprocessed`` or ``nnUNet_results`` already hold this id.
    """
    folder_name = dataset_folder_name(dataset_id, name)
    target = raw / folder_name
    clashes = [p for p in existing_with_id(raw, dataset_id) if p.name != folder_name]
    if clashes:
        raise UserError(
            f"{flag}: {raw} already holds {', '.join(p.name for p in clashes)} with id {dataset_id}; "
            f"nnU-Net finds datasets by id, so choose another id (it is not deleted, even with overwrite)"
        )
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a directory; remove it or choose another name")
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists; pass --overwrite to replace it")
    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        env = os.environ.get(var, "")
        stale = existing_with_id(Path(env), dataset_id) if env else []
        if stale:
            warnings.warn(
                f"{var} already holds {', '.join(str(p) for p in stale)}: it belongs to an earlier "
                f"dataset {dataset_id}; re-run nnUNetv2_plan_and_preprocess -d {dataset_id} before training",
                UserWarning,
                stacklevel=3,
            )
    return target


def temporary_sibling(target: Path) -> Path:
    """A new hidden folder next to ``target`` (nnU-Net's dataset search skips it) to build it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))


def move_into_place(built: Path, target: Path) -> Path:
    """Rename the complete folder ``built`` to ``target``, replacing a ``target`` folder that exists (the
    caller checked that it may). Returns ``target``."""
    if target.exists():
        shutil.rmtree(target)
    built.rename(target)
    return target
