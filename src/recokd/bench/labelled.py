"""``recokd bench --labelled-cases K``: the bench dataset's training cases split into labelled and unlabelled.

The teacher knows more than the labels: it trains on every training case as before, the students see the
labels of the first K cases (sorted case ids) only. Everything the students read is a view of the bench
dataset inside the bench folder (``OUT`` = ``-o``), so the user's nnU-Net folders are never written::

    OUT/labelled/nnUNet_raw/<dataset>/            imagesTr, labelsTr: links to the K labelled cases;
                                                  dataset.json with numTraining K
    OUT/labelled/nnUNet_preprocessed/<dataset>/   the preprocessed dataset with the K cases only (links to
                                                  their files, the plans, gt_segmentations) and its own
                                                  splits_final.json: nnU-Net's 5-fold split of the K cases
    OUT/labelled/unlabelled_scans/                links to the images of the unlabelled pool: the other
                                                  training cases, then the extra scans of
                                                  ``--unlabelled-images`` (the first U of them with
                                                  ``--unlabelled-cases U``; ``recokd train --unlabelled`` of
                                                  every KD run)
    OUT/pseudo/nnUNet_raw/<dataset>/              the pseudo-label dataset (``recokd pseudo-label``): the K
                                                  cases + the teacher's segmentations of the others
    OUT/pseudo/nnUNet_preprocessed/<dataset>/     it, preprocessed with the teacher's plans, with the
                                                  labelled split's folds plus every pseudo-labelled case
                                                  in each training set (validation cases unchanged)

The dataset keeps its name in these roots (each run's ``nnUNet_raw``/``nnUNet_preprocessed`` point at the
right one), so model folders, student plans and predictions are named as in any bench. ``nokd`` and the KD
runs train with the labelled view; ``pseudo`` with the pseudo-label dataset (:mod:`recokd.bench.pseudo`,
made by its first run once the teacher exists). Every student of every seed and method thus has the same
labelled cases and the same validation cases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recokd.errors import UserError
from recokd.json_files import write_json_atomic

LABELLED_DIR = "labelled"
PSEUDO_DIR = "pseudo"
SCANS_DIR = "unlabelled_scans"
SPLITS_FILE = "splits_final.json"
#: in OUT/labelled: which cases are labelled and unlabelled (a record for the reader)
SPLIT_RECORD = "split.json"
#: sub-folders of a preprocessed dataset that are linked whole, not case by case
WHOLE_FOLDERS = ("gt_segmentations",)
#: sub-folders of a preprocessed dataset that belong to it alone (never linked into a view)
OWN_FOLDERS = ("unlabelled",)  # recokd.nnunet.unlabelled.UNLABELLED_DIR (that module imports torch)
#: fewest unlabelled scans of label-free students (``--labelled-cases 0``): nnU-Net's 5-fold split of them
MIN_POOL_LABEL_FREE = 5
#: nnU-Net's seed of its 5-fold split (nnunetv2.utilities.crossval_split.generate_crossval_split)
SPLIT_SEED = 12345


def split_cases(raw_dataset: Path, k: int) -> tuple[list[str], list[str]]:
    """``(labelled, unlabelled)`` case ids of the raw dataset's training cases: the first ``k`` of the sorted
    ids and the others (``k`` 0: label-free, every case unlabelled). UserError naming ``--labelled-cases``
    unless ``k`` leaves at least one unlabelled case."""
    from recokd.nnunet.scans import labelled_cases

    ids = sorted(labelled_cases(raw_dataset, what="--labelled-cases: the bench dataset"))
    if not 0 <= k < len(ids):
        raise UserError(
            f"--labelled-cases {k}: {raw_dataset} has {len(ids)} training cases; give fewer, so that some "
            "are left as unlabelled scans"
        )
    return ids[:k], ids[k:]


def extra_scans(
    folder: Path, dataset_json: dict[str, Any], dataset_cases: list[str]
) -> dict[str, list[Path]]:
    """The cases of ``--unlabelled-images`` (``{case: [channel files]}``, sorted ids): raw images in nnU-Net
    naming with the dataset's file ending and channel count (images are not read here: the preprocessing
    does). UserError in one line when a case id is one of the dataset's training cases ``dataset_cases``."""
    from recokd.nnunet.scans import check_scan_folder

    try:
        cases = check_scan_folder(folder, dataset_json, check_images=False, what="folder")
    except UserError as e:
        channels = len(dataset_json["channel_names"])
        raise UserError(
            f"--unlabelled-images (the bench dataset's {channels} channel(s), file ending "
            f"{dataset_json['file_ending']}): {e}"
        ) from None
    clashes = sorted(set(cases) & set(dataset_cases))
    if clashes:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise UserError(
            f"--unlabelled-images {folder}: case id(s) {', '.join(clashes[:3])}{more} are training cases of "
            "the bench dataset too; case ids must be unique: rename the scan files"
        )
    return cases


def unlabelled_pool(unlabelled: list[str], extra: list[str], u: int | None) -> tuple[list[str], list[str]]:
    """``(dataset cases, extra cases)`` the students get as unlabelled scans: the pool is the dataset's
    ``unlabelled`` cases (sorted) then the ``extra`` images (sorted); ``u``: its first ``u`` only (None: all).
    UserError naming ``--unlabelled-cases`` when the pool has fewer than ``u``."""
    unlabelled, extra = sorted(unlabelled), sorted(extra)
    n = len(unlabelled) + len(extra)
    if u is None:
        return unlabelled, extra
    if u > n:
        raise UserError(
            f"--unlabelled-cases {u}: the unlabelled pool has {n} scan(s) ({len(unlabelled)} unlabelled "
            f"training case(s) of the dataset + {len(extra)} of --unlabelled-images); give at most {n} or "
            "add scans with --unlabelled-images"
        )
    return unlabelled[:u], extra[: max(0, u - len(unlabelled))]


def check_label_free_pool(pool: int) -> None:
    """Label-free students (``--labelled-cases 0``) train and validate on the pseudo-labelled pool, with
    nnU-Net's 5-fold split of it: UserError unless it holds 5 scans."""
    if pool < MIN_POOL_LABEL_FREE:
        raise UserError(
            f"--labelled-cases 0: the unlabelled pool has {pool} scan(s); label-free students need "
            f"{MIN_POOL_LABEL_FREE} (nnU-Net's 5-fold split of the pseudo-labelled scans)"
        )


def student_splits(labelled: list[str]) -> list[dict[str, list[str]]]:
    """nnU-Net's own 5-fold split of the labelled cases (the split nnU-Net makes for a dataset of them: it
    lists the case ids sorted), the ids as plain strings."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    return [
        {"train": sorted(map(str, s["train"])), "val": sorted(map(str, s["val"]))}
        for s in generate_crossval_split(sorted(labelled), seed=SPLIT_SEED, n_splits=5)
    ]


def pseudo_splits(splits: list[dict[str, list[str]]], pseudo: list[str]) -> list[dict[str, list[str]]]:
    """The labelled ``splits`` with every pseudo-labelled case added to each fold's training cases; the
    validation cases stay the labelled ones (the same as the no-KD student's)."""
    return [{"train": sorted([*s["train"], *pseudo]), "val": list(s["val"])} for s in splits]


@dataclass(frozen=True)
class LabelledSplit:
    """The labelled/unlabelled split of a bench and where its views live (see the module doc)."""

    out: Path
    dataset: str
    labelled: list[str]
    #: the dataset's training cases the students get as unlabelled scans
    unlabelled: list[str]
    #: the cases of ``--unlabelled-images`` they get too (after ``unlabelled``)
    extra: list[str] = field(default_factory=list)
    #: the folder of ``--unlabelled-images`` (None: none)
    extra_folder: Path | None = None
    #: the dataset's training cases, labelled or not (None: :attr:`labelled` + :attr:`unlabelled`, the whole
    #: pool of the dataset's unlabelled cases)
    n_training: int | None = None

    @property
    def training_cases(self) -> int:
        """How many training cases the dataset has (the teacher's)."""
        return self.n_training if self.n_training is not None else len(self.labelled) + len(self.unlabelled)

    @property
    def pool(self) -> list[str]:
        """Every unlabelled scan of the students, in pool order: :attr:`unlabelled`, then :attr:`extra`."""
        return [*self.unlabelled, *self.extra]

    @property
    def root(self) -> Path:
        return self.out / LABELLED_DIR

    @property
    def raw_root(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed_root(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def scans(self) -> Path:
        return self.root / SCANS_DIR

    @property
    def pseudo_raw_root(self) -> Path:
        return self.out / PSEUDO_DIR / "nnUNet_raw"

    @property
    def pseudo_preprocessed_root(self) -> Path:
        return self.out / PSEUDO_DIR / "nnUNet_preprocessed"

    @property
    def label_free(self) -> bool:
        """No labelled case (``--labelled-cases 0``): the students train on the pseudo-labelled pool."""
        return not self.labelled

    def splits(self) -> list[dict[str, list[str]]]:
        """The students' folds (:func:`student_splits`) of the labelled cases; label-free: of the pool."""
        return student_splits(self.labelled or self.pool)

    def pseudo_splits(self) -> list[dict[str, list[str]]]:
        """The folds of the pseudo-label dataset: :meth:`splits` with the pool added to each training set
        (:func:`pseudo_splits`); label-free: :meth:`splits`, the pool's own."""
        return self.splits() if self.label_free else pseudo_splits(self.splits(), self.pool)

    def record(self, fold: str) -> dict[str, Any]:
        split = self.splits()[int(fold)]
        return {
            "labelled": self.labelled,
            "unlabelled": self.unlabelled,
            "unlabelled_images": self.extra,
            "unlabelled_images_folder": str(self.extra_folder) if self.extra_folder else None,
            "fold": int(fold),
            "train": split["train"],
            "val": split["val"],
        }


def _link(source: Path, link: Path) -> None:
    """``link`` -> ``source`` unless ``link`` exists (a link already made by an earlier call)."""
    if link.is_symlink() or link.exists():
        return
    link.symlink_to(source.resolve())


def _case_files(folder: Path, case: str) -> list[Path]:
    """The files of one case in a preprocessed data folder (``CASE.b2nd``, ``CASE_seg.b2nd``, ``CASE.pkl``,
    or the numpy format's ``CASE.npz``/``.npy``)."""
    return [p for p in folder.iterdir() if p.name.startswith((f"{case}.", f"{case}_seg."))]


def write_raw_view(split: LabelledSplit, raw_dataset: Path) -> Path:
    """``OUT/labelled/nnUNet_raw/<dataset>``: the labelled cases of ``raw_dataset`` (links) and its
    ``dataset.json`` with ``numTraining`` K; ``OUT/labelled/unlabelled_scans``: the other cases' images.
    Returns the raw view's folder."""
    from recokd.nnunet.scans import labelled_cases

    cases = labelled_cases(raw_dataset, what="--labelled-cases: the bench dataset")
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text(encoding="utf-8"))
    ending = dataset_json["file_ending"]
    view = split.raw_root / split.dataset
    for sub in ("imagesTr", "labelsTr"):
        (view / sub).mkdir(parents=True, exist_ok=True)
    split.scans.mkdir(parents=True, exist_ok=True)
    for case in split.labelled:
        images, label = cases[case]
        for c, image in enumerate(images):
            _link(image, view / "imagesTr" / f"{case}_{c:04d}{ending}")
        _link(label, view / "labelsTr" / f"{case}{ending}")
    for case in split.unlabelled:
        for c, image in enumerate(cases[case][0]):
            _link(image, split.scans / f"{case}_{c:04d}{ending}")
    if split.extra:
        assert split.extra_folder is not None
        extra = extra_scans(split.extra_folder, dataset_json, list(cases))
        for case in split.extra:
            for c, image in enumerate(extra[case]):
                _link(image, split.scans / f"{case}_{c:04d}{ending}")
    dataset_json["numTraining"] = len(split.labelled)
    dataset_json.pop("dataset", None)  # an explicit file list would name the unlabelled cases
    write_json_atomic(view / "dataset.json", dataset_json, indent=4)
    return view


def write_preprocessed_view(split: LabelledSplit, preprocessed_dataset: Path) -> Path:
    """``OUT/labelled/nnUNet_preprocessed/<dataset>``: ``preprocessed_dataset`` with the labelled cases only
    (links: every file but the splits, the whole ``gt_segmentations``, each data folder case by case) and
    the students' ``splits_final.json``. Adds what an earlier call did not link (e.g. the student plans of a
    new width). Returns the view's folder."""
    view = split.preprocessed_root / split.dataset
    view.mkdir(parents=True, exist_ok=True)
    for entry in sorted(preprocessed_dataset.iterdir()):
        if entry.name == SPLITS_FILE or entry.name in OWN_FOLDERS:
            continue
        if entry.is_file() or entry.name in WHOLE_FOLDERS:
            _link(entry, view / entry.name)
            continue
        if entry.is_dir():  # a data folder (nnU-Net's data identifier of a configuration)
            folder = view / entry.name
            folder.mkdir(exist_ok=True)
            for case in split.labelled:
                for file in _case_files(entry, case):
                    _link(file, folder / file.name)
    splits = split.splits()
    write_json_atomic(view / SPLITS_FILE, splits, indent=4)
    return view


def write_labelled_views(
    split: LabelledSplit, raw_dataset: Path, preprocessed_dataset: Path, fold: str
) -> None:
    """Both views and ``OUT/labelled/split.json`` (idempotent: the parent calls it on every start); label-free
    (no labelled case): the unlabelled scans and the record only (the students train on the pseudo-label
    dataset)."""
    write_raw_view(split, raw_dataset)
    if not split.label_free:
        write_preprocessed_view(split, preprocessed_dataset)
    write_json_atomic(split.root / SPLIT_RECORD, split.record(fold), indent=2)

