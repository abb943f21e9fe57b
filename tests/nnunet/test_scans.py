"""Folders of raw scans in nnU-Net naming, checked against a model's dataset.json (recokd.nnunet.scans)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.errors import UserError
from recokd.nnunet.scans import check_scan_folder, labelled_cases

DATASET_JSON = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1},
                "file_ending": ".nii.gz"}


def _image(path: Path, value: float = 1.0) -> Path:
    itk = sitk.GetImageFromArray(np.full((4, 5, 6), value, np.float32))
    sitk.WriteImage(itk, str(path))
    return path


def _scans(folder: Path, cases=("a", "b"), channels=(0, 1)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for c in channels:
            _image(folder / f"{case}_{c:04d}.nii.gz")
    return folder


def test_cases_and_their_channel_files_in_order(tmp_path: Path) -> None:
    folder = _scans(tmp_path / "scans", cases=("case_10", "case_2"))
    (folder / ".DS_Store").write_text("")  # hidden files and sub-folders are ignored, as nnU-Net does
    (folder / "sub").mkdir()
    found = check_scan_folder(folder, DATASET_JSON, exclude_case_ids=("case_1", "other"))
    assert found == {"case_10": [folder / "case_10_0000.nii.gz", folder / "case_10_0001.nii.gz"],
                     "case_2": [folder / "case_2_0000.nii.gz", folder / "case_2_0001.nii.gz"]}
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder

    assert list(found) == list(get_identifiers_from_splitted_dataset_folder(str(folder), ".nii.gz"))


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^scans folder .*nope does not exist or is not a folder$"):
        check_scan_folder(tmp_path / "nope", DATASET_JSON)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_text("")
    with pytest.raises(UserError, match=r"^--unlabelled .*empty is empty: expected raw images in nnU-Net "
                                        r"naming \(CASE_0000\.nii\.gz, \.\.\.\)$"):
        check_scan_folder(tmp_path / "empty", DATASET_JSON, what="--unlabelled")


def test_channel_count(tmp_path: Path) -> None:
    folder = _scans(tmp_path / "one", channels=(0,))
    with pytest.raises(UserError, match=r"case a has 1 channel file\(s\) but the model takes 2 "
                                        r"input channel\(s\): 0000 \(T1\), 0001 \(T2\) "
                                        r"\(missing a_0001\.nii\.gz\)"):
        check_scan_folder(folder, DATASET_JSON)
    folder = _scans(tmp_path / "three", channels=(0, 1, 2))
    with pytest.raises(UserError, match=r"unexpected a_0002\.nii\.gz"):
        check_scan_folder(folder, DATASET_JSON)
    folder = _scans(tmp_path / "nosuffix", cases=("a",))
    _image(folder / "b.nii.gz")
    with pytest.raises(UserError, match=r"b\.nii\.gz: nnU-Net input files are named CASE_XXXX\.nii\.gz"):
        check_scan_folder(folder, DATASET_JSON)


def test_other_file_ending(tmp_path: Path) -> None:
    folder = _scans(tmp_path / "mixed")
    _image(folder / "c_0000.nii")
    _image(folder / "c_0001.nii")
    with pytest.raises(UserError, match=r"mixed: c_0000\.nii, c_0001\.nii do\(es\) not end in \.nii\.gz, "
                                        r"the file ending of the model's dataset\.json"):
        check_scan_folder(folder, DATASET_JSON)
    folder = _scans(tmp_path / "mha", cases=())
    _image(folder / "a_0000.mha")
    with pytest.raises(UserError, match=r"a_0000\.mha do\(es\) not end in \.nii\.gz"):
        check_scan_folder(folder, DATASET_JSON)


def test_case_ids_colliding_with_labelled_cases(tmp_path: Path) -> None:
    folder = _scans(tmp_path / "scans", cases=("a", "b", "c"))
    with pytest.raises(UserError, match=r"case id\(s\) a, c are labelled cases too; case ids must be "
                                        r"unique: rename the scan files \(e\.g\. a_u_0000\.nii\.gz\)"):
        check_scan_folder(folder, DATASET_JSON, exclude_case_ids={"c", "a", "z"})


def test_unreadable_and_nan_images(tmp_path: Path) -> None:
    folder = _scans(tmp_path / "bad")
    (folder / "b_0001.nii.gz").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"cannot read the image .*b_0001\.nii\.gz"):
        check_scan_folder(folder, DATASET_JSON)
    assert list(check_scan_folder(folder, DATASET_JSON, check_images=False)) == ["a", "b"]
    _image(folder / "b_0001.nii.gz", np.nan)
    with pytest.raises(UserError, match=r"b_0001\.nii\.gz: 120 of 120 voxels are NaN or infinite"):
        check_scan_folder(folder, DATASET_JSON)


def test_channels_nnunets_reader_refuses(tmp_path: Path) -> None:
    folder = _scans(tmp_path / "geometry", cases=("a",))
    itk = sitk.GetImageFromArray(np.ones((4, 5, 6), np.float32))
    itk.SetSpacing((1.0, 1.0, 2.0))  # channel 1 on another grid than channel 0
    sitk.WriteImage(itk, str(folder / "a_0001.nii.gz"))
    with pytest.raises(UserError, match=r"^-i: nnU-Net's image reader SimpleITKIO refuses case a "
                                        r"\(a_0000\.nii\.gz, a_0001\.nii\.gz\): ERROR! Not all input images "
                                        r"have the same spacing"):
        check_scan_folder(folder, DATASET_JSON, what="-i")
    plans = {"image_reader_writer": "NibabelIO"}  # the plans' reader is the one used
    with pytest.raises(UserError, match=r"image reader NibabelIO refuses case a"):
        check_scan_folder(folder, DATASET_JSON, plans=plans)


def _raw_dataset(folder: Path, cases=("l1", "l2")) -> Path:
    _scans(folder / "imagesTr", cases=cases)
    (folder / "labelsTr").mkdir()
    for case in cases:
        _image(folder / "labelsTr" / f"{case}.nii.gz", 1)
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": len(cases)}))
    return folder


def test_labelled_cases_of_a_raw_dataset(tmp_path: Path) -> None:
    folder = _raw_dataset(tmp_path / "Dataset001_L")
    found = labelled_cases(folder)
    images = folder / "imagesTr"
    assert found == {case: ([images / f"{case}_0000.nii.gz", images / f"{case}_0001.nii.gz"],
                            folder / "labelsTr" / f"{case}.nii.gz") for case in ("l1", "l2")}
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    nnunet = get_filenames_of_train_images_and_targets(str(folder))
    assert {k: ([Path(p) for p in v["images"]], Path(v["label"])) for k, v in nnunet.items()} == found
    # dataset.json's explicit case list (nnU-Net's "dataset" entry)
    explicit = json.loads((folder / "dataset.json").read_text())
    explicit["dataset"] = {"l1": {"images": ["imagesTr/l1_0000.nii.gz", "imagesTr/l1_0001.nii.gz"],
                                  "label": "labelsTr/l1.nii.gz"}}
    (folder / "dataset.json").write_text(json.dumps(explicit))
    assert labelled_cases(folder) == {"l1": found["l1"]}


def test_labelled_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^--labelled .*nope does not exist"):
        labelled_cases(tmp_path / "nope", what="--labelled")
    folder = _raw_dataset(tmp_path / "Dataset001_L")
    (folder / "labelsTr" / "l2.nii.gz").unlink()
    with pytest.raises(UserError, match=r"labelsTr/l2\.nii\.gz \(case l2\) does not exist"):
        labelled_cases(folder)
    (folder / "dataset.json").write_text(json.dumps({"labels": {}}))
    with pytest.raises(UserError, match=r"dataset\.json has no channel_names, file_ending"):
        labelled_cases(folder)
    (folder / "dataset.json").unlink()
    with pytest.raises(UserError, match=r"labelled dataset dataset\.json .*dataset\.json does not exist"):
        labelled_cases(folder)
