"""Unlabelled scans in distillation (docs/method.md section 8): preprocessing and the mixed batches.

A folder of raw scans in nnU-Net naming (``CASE_0000.nii.gz``, ...) is preprocessed with the plans of the
run by nnU-Net's own preprocessor (the configuration's ``preprocessor_class``: transpose, crop to the
non-zero region, normalisation, resampling), exactly as ``nnUNetv2_predict`` preprocesses a test case, and
saved in the preprocessed dataset's own format (``nnUNetDatasetBlosc2`` or ``nnUNetDatasetNumpy``) with a
segmentation that holds no label (nnU-Net's non-zero mask: ``-1`` outside, ``0`` inside) and no
foreground locations. The folder is

    ``$nnUNet_preprocessed/DatasetXXX_Name/unlabelled/<scan folder name>_<path hash>/<data identifier>``

so that several scan folders and configurations live side by side; finished cases are skipped on the
next call (a case's files are written under partial names and renamed when complete, its ``.pkl`` last:
:mod:`recokd.atomic_files`).

During training (:class:`MixedBatches`) each batch of ``B`` patches takes ``B_u`` patches from the
unlabelled scans and ``B - B_u`` from nnU-Net's labelled loader, both through the run's own augmentation:

    ``B_u = min(B - 1, max(1, round(share * B)))`` for ``share > 0`` (no unlabelled loader at ``share = 0``)

and hands the trainer a ``"labelled"`` mask (``B`` booleans).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recokd.atomic_files import atomic_paths, partial_path, remove_stale_partials
from recokd.errors import UserError

#: the default share of unlabelled patches in a batch (:func:`unlabelled_batch_size`)
DEFAULT_UNLABELLED_SHARE = 0.5
#: sub-folder of a preprocessed dataset that holds preprocessed unlabelled scans
UNLABELLED_DIR = "unlabelled"


def unlabelled_batch_size(batch_size: int, share: float) -> int:
    """``B_u``, the unlabelled patches per batch of ``batch_size`` for a share in ``[0, 1)``.

    ``0`` for ``share = 0``; otherwise ``round(share * B)`` clipped to ``[1, B - 1]``, so that every
    batch keeps at least one labelled and one unlabelled patch. A batch of 1 cannot be shared.
    """
    if not 0 <= share < 1:
        raise UserError(f"unlabelled share must be in [0, 1), got {share}")
    if share == 0:
        return 0
    if batch_size < 2:
        raise UserError(f"the plans' batch size is {batch_size}: a batch must hold at least one labelled and "
                        "one unlabelled patch (batch size >= 2) to train with unlabelled scans")
    return min(batch_size - 1, max(1, round(share * batch_size)))


def unlabelled_preprocessed_folder(preprocessed_dataset: Path, scans: Path, data_identifier: str) -> Path:
    """Where the scans of ``scans`` are preprocessed for a configuration (see the module docstring)."""
    scans = Path(scans).expanduser().resolve()
    digest = hashlib.sha256(str(scans).encode()).hexdigest()[:8]
    return Path(preprocessed_dataset) / UNLABELLED_DIR / f"{scans.name}_{digest}" / data_identifier


@dataclass
class UnlabelledScans:
    """Unlabelled scans checked for a run: ``cases`` (case id -> channel files), where they are
    preprocessed (``folder``) and in which format (``dataset_class``)."""

    source: Path
    cases: dict[str, list[Path]]
    folder: Path
    dataset_class: type

    def preprocess(self, plans: dict, configuration: str, dataset_json: dict) -> list[str]:
        """:func:`preprocess_unlabelled` of these scans into :attr:`folder`."""
        return preprocess_unlabelled(self.cases, self.folder, plans, configuration, dataset_json,
                                     self.dataset_class)


def find_unlabelled_scans(
    scans: str | Path, preprocessed_dataset: Path, plans: dict, configuration: str, dataset_json: dict
) -> UnlabelledScans:
    """Check a folder of unlabelled scans against a preprocessed nnU-Net dataset, writing nothing.

    The scans must match ``dataset_json`` (channels, file ending:
    :func:`recokd.nnunet.scans.check_scan_folder`) and no case id may be one of the dataset's preprocessed
    cases; an ignore label is refused (nnU-Net's loader draws patches of such datasets from annotated
    voxels, and unlabelled scans have none).
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from recokd.nnunet.layout import data_identifier
    from recokd.nnunet.scans import check_scan_folder

    identifier = data_identifier(plans, configuration)
    labelled_folder = Path(preprocessed_dataset) / str(identifier)
    if identifier is None or not labelled_folder.is_dir():
        raise UserError(f"{labelled_folder}: no preprocessed data of configuration {configuration!r}; run "
                        "nnUNetv2_plan_and_preprocess first")
    if "ignore" in dataset_json.get("labels", {}):
        raise UserError(f"{preprocessed_dataset / 'dataset.json'}: datasets with an ignore label cannot take "
                        "unlabelled scans (nnU-Net samples their patches from annotated voxels)")
    dataset_class = infer_dataset_class(str(labelled_folder))
    labelled = dataset_class.get_identifiers(str(labelled_folder))
    cases = check_scan_folder(scans, dataset_json, exclude_case_ids=labelled)
    folder = unlabelled_preprocessed_folder(Path(preprocessed_dataset), Path(scans), identifier)
    return UnlabelledScans(Path(scans).expanduser().resolve(), cases, folder, dataset_class)


def preprocess_unlabelled(
    cases: dict[str, list[Path]],
    out: Path,
    plans: dict,
    configuration: str,
    dataset_json: dict,
    dataset_class: type,
) -> list[str]:
    """Preprocess ``cases`` (case id -> its channel files, in channel order) into ``out``.

    Uses the configuration's nnU-Net preprocessor (``run_case`` without a segmentation) and
    ``dataset_class.save_case``. Cases already complete in ``out`` are skipped. Returns the case ids.
    A scan nnU-Net cannot read or preprocess is a :class:`UserError` naming its files.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from tqdm import tqdm

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    preprocessor = cm.preprocessor_class(verbose=False)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)  # a killed call's half-written case, never one of the dataset's cases
    todo = [c for c in sorted(cases) if not (out / f"{c}.pkl").is_file()]
    for case in tqdm(todo, desc="preprocessing unlabelled scans", unit="scan", disable=not todo):
        files = [str(f) for f in cases[case]]
        try:
            data, seg, properties = preprocessor.run_case(files, None, pm, cm, dataset_json)
        except Exception as e:  # nnU-Net raises anything from its readers and resamplers
            raise UserError(f"unlabelled scan {', '.join(files)}: nnU-Net's preprocessing failed "
                            f"({type(e).__name__}: {e})") from e
        properties["class_locations"] = {}  # no labels: patches are drawn at random
        _save_case(dataset_class, data, seg, properties, out / case, cm.patch_size)
    return sorted(cases)


def _save_case(dataset_class: type, data: np.ndarray, seg: np.ndarray, properties: dict, out: Path,
               patch_size: list[int]) -> None:
    """``dataset_class.save_case`` as nnU-Net's preprocessor calls it, under the partial name of ``out``;
    its files are renamed into place when all are written, the ``.pkl`` (what marks a case as complete
    for :func:`preprocess_unlabelled`) last (:func:`recokd.atomic_files.atomic_paths`)."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    data = data.astype(np.float32, copy=False)
    seg = seg.astype(np.int8 if seg.max(initial=0) <= 127 else np.int16, copy=False)
    blosc2 = issubclass(dataset_class, nnUNetDatasetBlosc2)
    files = [out.with_name(out.name + s) for s in ((".b2nd", "_seg.b2nd") if blosc2 else (".npz",))]
    with atomic_paths(*files, out.with_name(out.name + ".pkl")):  # writes the partial names of these
        if blosc2:
            from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

            blocks, chunks = comp_blosc2_params(data.shape, tuple(patch_size), data.itemsize)
            blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, tuple(patch_size), seg.itemsize)
            dataset_class.save_case(data, seg, properties, str(partial_path(out)), chunks=chunks,
                                    blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        else:
            dataset_class.save_case(data, seg, properties, str(partial_path(out)))


class MixedBatches:
    """nnU-Net batches of labelled patches extended by patches of unlabelled scans.

    ``labelled`` and ``unlabelled`` are nnU-Net batch generators (its augmenters): each ``next`` gives a
    dict with ``data`` (``B x C x ...``), ``target`` (a tensor or the deep-supervision list) and ``keys``.
    The mixed batch concatenates them along the batch axis (labelled first) and adds ``"labelled"``:
    ``B`` booleans, True for the labelled patches.
    """

    def __init__(self, labelled: Any, unlabelled: Any):
        self.labelled = labelled
        self.unlabelled = unlabelled

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        a = next(self.labelled)
        b = next(self.unlabelled)
        n_a, n_b = a["data"].shape[0], b["data"].shape[0]
        if isinstance(a["target"], (list, tuple)):
            target = [torch.cat([x, y]) for x, y in zip(a["target"], b["target"], strict=True)]
        else:
            target = torch.cat([a["target"], b["target"]])
        return {
            "data": torch.cat([a["data"], b["data"]]),
            "target": target,
            "keys": [*a.get("keys", []), *b.get("keys", [])],
            "labelled": torch.cat([torch.ones(n_a, dtype=torch.bool), torch.zeros(n_b, dtype=torch.bool)]),
        }

    def _finish(self) -> None:
        """Stop both generators' worker processes (nnU-Net calls this on its augmenters at the end)."""
        for gen in (self.labelled, self.unlabelled):
            finish = getattr(gen, "_finish", None)
            if finish is not None:
                finish()
