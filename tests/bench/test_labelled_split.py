"""``recokd bench --labelled-cases``: the split of the training cases, the students' views of the dataset, the
jobs of every run (the same labelled and validation cases for every method and seed), and the pseudo-label
dataset made once (no training: fake dataset files, nnU-Net's own split function)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recokd.bench import pseudo as pseudo_module
from recokd.bench.config import NOKD, PSEUDO, TEACHER, RunSpec, Selection, Study
from recokd.bench.labelled import (
    SPLIT_RECORD,
    LabelledSplit,
    pseudo_splits,
    split_cases,
    student_splits,
    write_labelled_views,
)
from recokd.bench.runner import BenchRunner, Layout
from recokd.errors import UserError

DATASET = "Dataset991_BenchPhantoms"
TEACHER_MODEL = f"/teachers/{DATASET}/nnUNetTrainer__nnUNetPlans__3d_fullres"
#: case ids in a shuffled order; "a4" (labelled with K=5) is a prefix of "a4b" (unlabelled)
IDS = ["a7", "a1", "a4b", "a0", "a3", "a6", "a2", "a4", "a5"]
K = 5
LABELLED = ["a0", "a1", "a2", "a3", "a4"]
UNLABELLED = ["a4b", "a5", "a6", "a7"]
CASE_FILES = ("{}.b2nd", "{}_seg.b2nd", "{}.pkl")


def _raw(tmp_path: Path) -> Path:
    """A raw dataset of two channels whose files hold their own names (no real images needed)."""
    raw = tmp_path / "raw" / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    for case in IDS:
        for c in range(2):
            (raw / "imagesTr" / f"{case}_{c:04d}.nii.gz").write_text(f"{case} image {c}")
        (raw / "labelsTr" / f"{case}.nii.gz").write_text(f"{case} label")
    dataset_json = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "organ": 1},
                    "file_ending": ".nii.gz", "numTraining": len(IDS)}
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    return raw


def _preprocessed(tmp_path: Path) -> Path:
    """The bench dataset's preprocessed folder as nnU-Net (and the teacher's training) leaves it."""
    pre = tmp_path / "pre" / DATASET
    data = pre / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    (pre / "gt_segmentations").mkdir()
    (pre / "unlabelled").mkdir()  # another run's preprocessed scans: never part of a view
    names = ("nnUNetPlans.json", "nnUNetPlans_recokd_t2.json", "dataset.json", "dataset_fingerprint.json")
    for name in names:
        (pre / name).write_text(json.dumps({"name": name}))
    (pre / "splits_final.json").write_text(json.dumps([{"train": IDS[:7], "val": IDS[7:]}] * 5))
    for case in IDS:
        for pattern in CASE_FILES:
            (data / pattern.format(case)).write_text(case)
        (pre / "gt_segmentations" / f"{case}.nii.gz").write_text(case)
    return pre


def _split(out: Path, raw: Path) -> LabelledSplit:
    return LabelledSplit(out, DATASET, *split_cases(raw, K))


def test_the_first_k_sorted_cases_are_labelled(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    assert split_cases(raw, K) == (LABELLED, UNLABELLED)
    assert split_cases(raw, K) == split_cases(raw, K)
    assert split_cases(raw, 8) == (sorted(IDS)[:8], ["a7"])
    with pytest.raises(UserError, match=r"--labelled-cases 9: .* has 9 training cases; give fewer"):
        split_cases(raw, 9)


def test_student_splits_are_nnunets_folds_of_the_labelled_cases_only() -> None:
    splits = student_splits(LABELLED)
    assert len(splits) == 5 and splits == student_splits(list(reversed(LABELLED)))  # order does not matter
    assert sorted(v for s in splits for v in s["val"]) == LABELLED  # every labelled case validated once
    for s in splits:
        assert sorted(s["train"] + s["val"]) == LABELLED and not set(s["train"]) & set(s["val"])
    pseudo = pseudo_splits(splits, UNLABELLED)
    for labelled, with_pseudo in zip(splits, pseudo, strict=True):
        assert with_pseudo["val"] == labelled["val"]
        assert with_pseudo["train"] == sorted(labelled["train"] + UNLABELLED)


def test_the_views_hold_the_labelled_cases_only(tmp_path: Path) -> None:
    raw, pre, out = _raw(tmp_path), _preprocessed(tmp_path), tmp_path / "out"
    split = _split(out, raw)
    source_splits = (pre / "splits_final.json").read_text()
    write_labelled_views(split, raw, pre, "0")

    view = split.raw_root / DATASET
    assert sorted(p.name for p in (view / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in LABELLED]
    assert len(list((view / "imagesTr").iterdir())) == 2 * K
    assert (view / "labelsTr" / "a4.nii.gz").read_text() == "a4 label"
    assert (view / "imagesTr" / "a4_0001.nii.gz").read_text() == "a4 image 1"
    assert json.loads((view / "dataset.json").read_text())["numTraining"] == K
    scans = sorted(p.name for p in split.scans.iterdir())
    assert scans == sorted(f"{c}_{i:04d}.nii.gz" for c in UNLABELLED for i in range(2))
    assert (split.scans / "a4b_0000.nii.gz").read_text() == "a4b image 0"

    pview = split.preprocessed_root / DATASET
    data = sorted(p.name for p in (pview / "nnUNetPlans_3d_fullres").iterdir())
    assert data == sorted(pattern.format(c) for c in LABELLED for pattern in CASE_FILES)
    assert not (pview / "unlabelled").exists()
    assert (pview / "gt_segmentations").is_symlink() and (pview / "nnUNetPlans_recokd_t2.json").is_symlink()
    assert not (pview / "splits_final.json").is_symlink()
    assert json.loads((pview / "splits_final.json").read_text()) == student_splits(LABELLED)
    assert (pre / "splits_final.json").read_text() == source_splits  # the teacher's split untouched
    record = json.loads((split.root / SPLIT_RECORD).read_text())
    assert record["labelled"] == LABELLED and record["unlabelled"] == UNLABELLED
    assert record["val"] == student_splits(LABELLED)[0]["val"]

    # on a later start: the student plans of a new width are linked too, nothing else changes
    (pre / "nnUNetPlans_recokd_t3.json").write_text("{}")
    write_labelled_views(split, raw, pre, "0")
    assert (pview / "nnUNetPlans_recokd_t3.json").is_symlink()
    assert sorted(p.name for p in (pview / "nnUNetPlans_3d_fullres").iterdir()) == data


def _runner(tmp_path: Path, methods: list[str], labelled: bool) -> tuple[BenchRunner, Layout]:
    study = Study(dataset=DATASET, phantoms=None, teacher=TEACHER_MODEL, teacher_epochs=None, epochs=2,
                  labelled_cases=K if labelled else None, unlabelled_share=0.25 if labelled else None)
    out = tmp_path / "out"
    runner = BenchRunner(out, study, Selection(methods, [2], [0, 1]), device="cpu", progress=False)
    split = LabelledSplit(out, DATASET, LABELLED, UNLABELLED) if labelled else None
    layout = Layout(out, DATASET, tmp_path / "raw", tmp_path / "pre", tmp_path / "imagesTs",
                    tmp_path / "labelsTs", Path(TEACHER_MODEL), {2: "nnUNetPlans_recokd_t2"}, split)
    return runner, layout


def test_every_student_sees_the_same_labelled_and_validation_cases(tmp_path: Path) -> None:
    runner, layout = _runner(tmp_path, ["reco", PSEUDO], labelled=True)
    split = layout.split
    assert split is not None
    view = (str(split.raw_root), str(split.preprocessed_root))
    for seed in (0, 1):
        for method in (NOKD, "reco"):
            job, env = runner.run_job(layout, RunSpec(method, 2, seed))
            assert (env["nnUNet_raw"], env["nnUNet_preprocessed"]) == view, method
            assert "pseudo" not in job
        job, _ = runner.run_job(layout, RunSpec("reco", 2, seed))
        argv = job["train"]["argv"]
        assert argv[argv.index("--unlabelled") + 1] == str(split.scans)
        assert argv[argv.index("--unlabelled-share") + 1] == "0.25"
        job, env = runner.run_job(layout, RunSpec(PSEUDO, 2, seed))
        assert (env["nnUNet_raw"], env["nnUNet_preprocessed"]) == (
            str(split.pseudo_raw_root), str(split.pseudo_preprocessed_root))
        assert job["train"]["type"] == "stock" and job["train"]["trainer"] == "nnUNetTrainerShort"
        assert env["RECOKD_SEED"] == str(seed) and env["RECOKD_SHORT_EPOCHS"] == "2"
        made = job["pseudo"]
        assert made["labelled"] == str(split.raw_root / DATASET) and made["scans"] == str(split.scans)
        assert made["plans"] == ["nnUNetPlans", "nnUNetPlans_recokd_t2"] and made["fold"] == "0"
        for fold, labelled in zip(made["splits"], student_splits(LABELLED), strict=True):
            assert fold["val"] == labelled["val"] and fold["train"] == sorted(labelled["train"] + UNLABELLED)
    # the teacher trains on every case, as without --labelled-cases
    job, env = runner.run_job(layout, RunSpec(TEACHER, None, None))
    assert env["nnUNet_preprocessed"] == str(layout.preprocessed_root) and "pseudo" not in job


def test_without_labelled_cases_the_runs_are_unchanged(tmp_path: Path) -> None:
    runner, layout = _runner(tmp_path, ["reco"], labelled=False)
    for method in (NOKD, "reco"):
        job, env = runner.run_job(layout, RunSpec(method, 2, 0))
        assert env["nnUNet_preprocessed"] == str(tmp_path / "pre") and "pseudo" not in job
    job, _ = runner.run_job(layout, RunSpec("reco", 2, 0))
    assert "--unlabelled" not in job["train"]["argv"] and "--unlabelled-share" not in job["train"]["argv"]


def test_the_pseudo_label_dataset_is_made_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pre_source = _preprocessed(tmp_path)
    calls: list[str] = []

    def write_raw(job: dict, target: Path) -> None:
        calls.append("pseudo-label")
        target.mkdir(parents=True)
        (target / "dataset.json").write_text("{}")

    def preprocess(job: dict, raw: Path, pre: Path) -> None:
        calls.append("preprocess")
        (pre / pseudo_module.PREPROCESSED_MARK).write_text("done")

    monkeypatch.setattr(pseudo_module, "_write_raw", write_raw)
    monkeypatch.setattr(pseudo_module, "_preprocess", preprocess)
    splits = pseudo_splits(student_splits(LABELLED), UNLABELLED)
    job = {"raw_root": str(tmp_path / "out/pseudo/nnUNet_raw"),
           "preprocessed_root": str(tmp_path / "out/pseudo/nnUNet_preprocessed"), "dataset": DATASET,
           "source_preprocessed": str(pre_source), "plans": ["nnUNetPlans", "nnUNetPlans_recokd_t2"],
           "splits": splits}
    pseudo_module.ensure_pseudo_dataset(job)
    pseudo_module.ensure_pseudo_dataset(job)  # the second pseudo run (another seed) finds it
    assert calls == ["pseudo-label", "preprocess"]
    pre = tmp_path / "out/pseudo/nnUNet_preprocessed" / DATASET
    assert json.loads((pre / "splits_final.json").read_text()) == splits
    for name in ("nnUNetPlans.json", "nnUNetPlans_recokd_t2.json", "dataset_fingerprint.json"):
        assert (pre / name).read_text() == (pre_source / name).read_text()
    # a new width on a resumed bench: its student plans are copied, nothing is made again
    (pre_source / "nnUNetPlans_recokd_t3.json").write_text('{"t": 3}')
    pseudo_module.ensure_pseudo_dataset({**job, "plans": ["nnUNetPlans", "nnUNetPlans_recokd_t3"]})
    assert (pre / "nnUNetPlans_recokd_t3.json").read_text() == '{"t": 3}' and len(calls) == 2
