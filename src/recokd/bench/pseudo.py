"""The worker side of ``recokd bench --labelled-cases``: the unlabelled scans preprocessed once for the KD
runs, and the pseudo-label dataset of the ``pseudo`` runs (the folders: :mod:`recokd.bench.labelled`).

- :func:`preprocess_scans` (job ``unlabelled``, started by the runner before any run): the unlabelled scans
  preprocessed with every student plans of the bench into the labelled view, exactly as ``recokd train
  --unlabelled`` does it (:mod:`recokd.nnunet.unlabelled`), so that KD runs started at once (``--jobs N``,
  Slurm) find them done instead of writing the same folder together.
- :func:`ensure_pseudo_dataset` (part of every ``pseudo`` run's job, under the lock of ``OUT/pseudo``, the
  first run makes it, the others find it): the teacher's segmentations of the unlabelled scans plus the
  labelled cases as a raw dataset (:mod:`recokd.nnunet.pseudo_label`, the teacher's fold of the bench,
  no test-time mirroring, as the bench's own predictions), preprocessed with the teacher's plans by
  nnU-Net's preprocessor, the student plans copied, and the labelled split's folds with every
  pseudo-labelled case added to the training cases.

Both run in a worker whose ``nnUNet_raw``/``nnUNet_preprocessed`` point at the roots they fill.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from recokd.bench.claims import bench_lock
from recokd.bench.labelled import SPLITS_FILE
from recokd.json_files import read_json, write_json_atomic
from recokd.nnunet.layout import parse_dataset_folder_name

#: in the pseudo-label dataset's preprocessed folder: its preprocessing finished
PREPROCESSED_MARK = ".recokd_preprocessed"
#: files of the bench dataset's preprocessed folder the pseudo-label dataset needs besides the plans
FINGERPRINT = "dataset_fingerprint.json"


def preprocess_scans(job: dict[str, Any]) -> None:
    """Preprocess ``job["scans"]`` into the labelled view ``job["preprocessed_dataset"]`` with each of
    ``job["plans"]`` (plans identifiers) for ``job["configuration"]``; finished cases are skipped."""
    from recokd.nnunet.unlabelled import find_unlabelled_scans

    pre = Path(job["preprocessed_dataset"])
    dataset_json = read_json(pre / "dataset.json", "preprocessed dataset.json")
    for identifier in job["plans"]:
        plans = read_json(pre / f"{identifier}.json", "student plans")
        scans = find_unlabelled_scans(job["scans"], pre, plans, job["configuration"], dataset_json)
        done = scans.preprocess(plans, job["configuration"], dataset_json)
        print(f"{len(done)} unlabelled scan(s) preprocessed with {identifier} in {scans.folder}", flush=True)


def ensure_pseudo_dataset(job: dict[str, Any]) -> None:
    """Make the pseudo-label dataset of the bench unless it exists (see the module doc); ``job``: the
    ``pseudo`` entry of a run's job (:meth:`recokd.bench.runner.BenchRunner.run_job`)."""
    raw_root, pre_root = Path(job["raw_root"]), Path(job["preprocessed_root"])
    with bench_lock(raw_root.parent):
        target = raw_root / job["dataset"]
        if (target / "dataset.json").is_file():
            print(f"pseudo-label dataset {target} exists", flush=True)
        else:
            _write_raw(job, target)
        pre = pre_root / job["dataset"]
        pre.mkdir(parents=True, exist_ok=True)
        source = Path(job["source_preprocessed"])
        for name in [f"{p}.json" for p in job["plans"]] + [FINGERPRINT]:
            if (source / name).is_file() and not (pre / name).is_file():
                shutil.copyfile(source / name, pre / name)
        if not (pre / PREPROCESSED_MARK).is_file():
            _preprocess(job, target, pre)
        write_json_atomic(pre / SPLITS_FILE, job["splits"], indent=4)


def _write_raw(job: dict[str, Any], target: Path) -> None:
    """The teacher's segmentations of the scans + the labelled cases (``recokd pseudo-label``'s machinery)."""
    from recokd.nnunet.model_folder import check_model_folder
    from recokd.nnunet.pseudo_label import plan_pseudo_labels, write_pseudo_label_dataset

    fold = job["fold"]
    model = check_model_folder(job["teacher"], [fold if fold == "all" else int(fold)], role="teacher")
    plan = plan_pseudo_labels(model, job["scans"], target, labelled=job["labelled"], mirroring=False)
    print(
        f"pseudo-labelling {len(plan.scans)} unlabelled scan(s) with the teacher {model.folder} (fold "
        f"{fold}, no mirroring) into {target}, with {len(plan.labelled)} labelled case(s) ...",
        flush=True,
    )
    write_pseudo_label_dataset(plan, job["device"], progress=False)


def _preprocess(job: dict[str, Any], raw: Path, pre: Path) -> None:
    """nnU-Net's preprocessing of the pseudo-label dataset with the teacher's plans (``job["plans"][0]``)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    shutil.copyfile(raw / "dataset.json", pre / "dataset.json")  # as nnU-Net's planner leaves it
    dataset_id = parse_dataset_folder_name(raw.name)[0]
    print(f"preprocessing {raw.name} with {job['plans'][0]} ({job['configuration']}) ...", flush=True)
    preprocess_dataset(dataset_id, job["plans"][0], [job["configuration"]], [1], show_progress_bar=False)
    (pre / PREPROCESSED_MARK).write_text("done\n", encoding="utf-8")
