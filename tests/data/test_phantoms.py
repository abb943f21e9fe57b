"""Tests for the synthetic CT phantoms (recokd.data.anatomy / recokd.data.phantoms)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.data import phantoms
from recokd.data.phantoms import (
    LABELS,
    PHANTOM_CLASSES,
    case_rng,
    generate_case,
    write_phantom_dataset,
)
from recokd.errors import UserError

SHAPE = (20, 32, 24)  # non-cubic, so that a swapped axis order cannot go unnoticed
SPACING = (2.5, 0.8, 1.0)  # anisotropic (z, y, x)


@pytest.fixture(autouse=True)
def _no_nnunet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    return write_phantom_dataset(
        7, num_cases=3, num_test_cases=2, seed=5, shape=SHAPE, spacing=SPACING, name="Ph", raw_dir=raw
    )


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _arr(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(_read(path))


# --- the written dataset ------------------------------------------------------------------------


def test_layout_and_dataset_json_match_the_files(dataset: Path) -> None:
    assert dataset.name == "Dataset007_Ph"
    assert sorted(p.name for p in dataset.parent.iterdir()) == ["Dataset007_Ph"]  # no temp folder left
    dj = json.loads((dataset / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"}
    assert dj["labels"] == LABELS and list(dj["labels"].values()) == list(range(len(LABELS)))
    assert dj["labels"]["background"] == 0
    assert dj["file_ending"] == ".nii.gz"
    assert dj["numTraining"] == 3
    images = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    labels = sorted(p.name for p in (dataset / "labelsTr").iterdir())
    assert images == [f"Ph_{i:03d}_0000.nii.gz" for i in range(3)]
    assert labels == [f"Ph_{i:03d}.nii.gz" for i in range(3)]
    # held-out cases continue the numbering, their labels are kept in labelsTs
    test_images = sorted(p.name for p in (dataset / "imagesTs").iterdir())
    assert test_images == ["Ph_003_0000.nii.gz", "Ph_004_0000.nii.gz"]
    assert sorted(p.name for p in (dataset / "labelsTs").iterdir()) == ["Ph_003.nii.gz", "Ph_004.nii.gz"]
    meta = dj["reco_kd_phantoms"]
    assert meta["seed"] == 5 and meta["shape_zyx"] == list(SHAPE) and meta["spacing_zyx_mm"] == list(SPACING)
    assert set(meta["mean_voxels_per_case"]) == set(LABELS)


def test_spacing_and_axis_order_round_trip_through_simpleitk(dataset: Path) -> None:
    for path in [*(dataset / "imagesTr").iterdir(), *(dataset / "labelsTs").iterdir()]:
        img = _read(path)
        assert img.GetSpacing() == pytest.approx(SPACING[::-1])  # ITK: (x, y, z)
        assert img.GetSize() == SHAPE[::-1]
        assert sitk.GetArrayFromImage(img).shape == SHAPE  # numpy: (z, y, x)


def test_nnunet_reads_the_spacing_in_array_order(dataset: Path) -> None:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    images, props = SimpleITKIO().read_images([str(dataset / "imagesTr" / "Ph_000_0000.nii.gz")])
    assert images.shape == (1, *SHAPE)
    assert list(props["spacing"]) == pytest.approx(list(SPACING))


def test_nnunet_verify_dataset_integrity_accepts_it(dataset: Path, capfd: pytest.CaptureFixture) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any error
    out = capfd.readouterr().out  # fd level: the checks run in a spawned worker process
    assert "verify_dataset_integrity Done" in out
    assert "Error" not in out and "Warning" not in out


def test_written_cases_have_every_class_and_match_generate_case(dataset: Path) -> None:
    for i, (split, path) in enumerate([("Tr", p) for p in sorted((dataset / "labelsTr").iterdir())]
                                      + [("Ts", p) for p in sorted((dataset / "labelsTs").iterdir())]):
        label = _arr(path)
        image = _arr(dataset / f"images{split}" / path.name.replace(".nii.gz", "_0000.nii.gz"))
        assert label.dtype == np.uint8 and image.dtype == np.float32
        assert set(np.unique(label)) == set(LABELS.values())
        ref_image, ref_label = generate_case(case_rng(5, i), SHAPE, SPACING)
        np.testing.assert_array_equal(label, ref_label)
        np.testing.assert_array_equal(image, ref_image)


# --- single cases -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases64() -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate_case(case_rng(0, i)) for i in range(4)]


def test_class_sizes_at_64(cases64: list[tuple[np.ndarray, np.ndarray]]) -> None:
    by_size = {s: [c.label for c in PHANTOM_CLASSES if c.size == s] for s in ("large", "medium", "small")}
    assert len(by_size["large"]) == 1 and len(by_size["medium"]) >= 2 and len(by_size["small"]) >= 2
    for _, label in cases64:
        counts = np.bincount(label.ravel(), minlength=len(LABELS))
        assert (counts > 0).all(), counts
        large = counts[by_size["large"][0]]
        assert large > 10_000
        assert large > 10 * counts[by_size["medium"]].max()
        assert (counts[by_size["small"]] < 500).all()
        assert (counts[by_size["medium"]] > counts[by_size["small"]].max()).all()
        assert ((counts[by_size["small"]] >= 50) & (counts[by_size["small"]] <= 300)).any()


def test_lesion_lies_inside_the_liver(cases64: list[tuple[np.ndarray, np.ndarray]]) -> None:
    from scipy import ndimage as ndi

    for _, label in cases64:
        lesion = label == LABELS["lesion"]
        rim = ndi.binary_dilation(lesion) & ~lesion
        assert (label[rim] == LABELS["liver"]).mean() > 0.9


def test_ct_like_intensities_overlap_between_classes(cases64: list[tuple[np.ndarray, np.ndarray]]) -> None:
    image, label = cases64[0]
    assert image.dtype == np.float32 and image.shape == (64, 64, 64)
    assert image.min() >= -1024 and image.max() <= 3071
    assert np.median(image[0, 0]) < -900  # air at the corner of the field of view
    liver = image[label == LABELS["liver"]]
    spleen = image[label == LABELS["spleen"]]
    # liver and spleen cannot be told apart by intensity alone: their central 80 % overlap
    lo_l, hi_l = np.percentile(liver, [10, 90])
    lo_s, hi_s = np.percentile(spleen, [10, 90])
    assert lo_l < hi_s and lo_s < hi_l
    assert abs(np.median(liver) - np.median(spleen)) < 30
    # the lesion is darker than the liver around it
    assert np.median(image[label == LABELS["lesion"]]) < np.median(liver) - 15


def test_generate_case_is_deterministic_and_cases_differ() -> None:
    a_img, a_lab = generate_case(case_rng(3, 1), (24, 24, 24))
    b_img, b_lab = generate_case(case_rng(3, 1), (24, 24, 24))
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    c_img, c_lab = generate_case(case_rng(3, 2), (24, 24, 24))
    d_img, _ = generate_case(case_rng(4, 1), (24, 24, 24))
    assert not np.array_equal(a_lab, c_lab) and not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_img, d_img)


def test_every_class_present_on_the_smallest_grid() -> None:
    for i in range(5):
        _, label = generate_case(case_rng(0, i), (16, 16, 16))
        assert set(np.unique(label)) == set(LABELS.values())


def test_small_scale_enlarges_only_the_small_structures() -> None:
    from recokd.data.anatomy import PHANTOM_CLASSES

    small = [c.label for c in PHANTOM_CLASSES if c.size == "small"]
    others = [c.label for c in PHANTOM_CLASSES if c.size != "small"]
    default = [generate_case(case_rng(0, i), (32, 32, 32)) for i in range(4)]
    explicit = [generate_case(case_rng(0, i), (32, 32, 32), small_scale=1.0) for i in range(4)]
    scaled = [generate_case(case_rng(0, i), (32, 32, 32), small_scale=2.0) for i in range(4)]
    # 1 is the original generator, byte for byte (datasets written before the option keep their cases)
    assert all(a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
               for a, b in zip(default, explicit, strict=True))
    counts = {name: np.sum([np.bincount(lab.ravel(), minlength=len(LABELS)) for _, lab in cases], axis=0)
              for name, cases in (("default", default), ("scaled", scaled))}
    for label in small:  # radii x2: the vessel's cross-section x4, the blobs' volume up to x8
        assert counts["scaled"][label] >= 2.5 * counts["default"][label]
        assert counts["scaled"][label] / len(scaled) >= 60  # learnable: no longer 7-30 voxels at 32^3
    # the organs are drawn the same; they only lose the voxels the larger small structures now cover
    for (_, lab_default), (_, lab_scaled) in zip(default, scaled, strict=True):
        for label in others:
            assert not np.any((lab_scaled == label) & (lab_default != label))
            lost = (lab_default == label) & (lab_scaled != label)
            assert np.isin(lab_scaled[lost], small).all()


@pytest.mark.parametrize("value", [0.4, 4.5, float("nan"), True, "2"])
def test_small_scale_out_of_range_is_refused(value) -> None:
    with pytest.raises(UserError, match="small_scale"):
        generate_case(np.random.default_rng(0), (16, 16, 16), small_scale=value)


@pytest.mark.parametrize(
    ("shape", "spacing", "kwargs"),
    [
        ((15, 32, 32), (1, 1, 1), {}),
        ((32, 32), (1, 1, 1), {}),
        ((32, 32, 32.5), (1, 1, 1), {}),
        ((32, 32, 32), (0, 1, 1), {}),
        ((32, 32, 32), (1, -1, 1), {}),
        ((32, 32, 32), (1, 1, float("nan")), {}),
        ((32, 32, 32), (1, 1, 1), {"noise_hu": -1.0}),
    ],
)
def test_generate_case_rejects_bad_input(shape, spacing, kwargs) -> None:
    with pytest.raises(UserError, match="shape|spacing|noise_hu"):
        generate_case(np.random.default_rng(0), shape, spacing, **kwargs)


# --- writing: refusal, overwrite, bad input -----------------------------------------------------


def _small(raw: Path, **kw) -> Path:
    kw = {"num_cases": 2, "shape": (16, 16, 16), "raw_dir": raw, **kw}
    return write_phantom_dataset(kw.pop("dataset_id", 901), **kw)


def test_refuses_to_overwrite_without_the_flag(tmp_path: Path) -> None:
    folder = _small(tmp_path)
    (folder / "my_notes.txt").write_text("user data")
    with pytest.raises(UserError, match="already exists.*overwrite"):
        _small(tmp_path, seed=1)
    assert (folder / "my_notes.txt").read_text() == "user data"


def test_overwrite_replaces_only_that_folder(tmp_path: Path) -> None:
    folder = _small(tmp_path)
    (folder / "my_notes.txt").write_text("old")
    other = tmp_path / "Dataset902_Other"
    other.mkdir()
    before = _arr(folder / "labelsTr" / "Phantoms_000.nii.gz")
    assert _small(tmp_path, seed=1, overwrite=True) == folder
    assert not (folder / "my_notes.txt").exists()
    assert other.is_dir()
    assert not np.array_equal(before, _arr(folder / "labelsTr" / "Phantoms_000.nii.gz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset901_Phantoms", "Dataset902_Other"]


def test_refuses_another_dataset_with_the_same_id_even_with_overwrite(tmp_path: Path) -> None:
    clash = tmp_path / "Dataset901_Liver"
    clash.mkdir()
    for overwrite in (False, True):
        with pytest.raises(UserError, match="Dataset901_Liver"):
            _small(tmp_path, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset901_Liver"]


def test_failed_generation_keeps_the_old_dataset_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    folder = _small(tmp_path)
    before = _arr(folder / "imagesTr" / "Phantoms_001_0000.nii.gz")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(phantoms, "generate_case", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _small(tmp_path, seed=3, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset901_Phantoms"]
    np.testing.assert_array_equal(before, _arr(folder / "imagesTr" / "Phantoms_001_0000.nii.gz"))


def test_raw_dir_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="nnUNet_raw"):
        write_phantom_dataset(901, num_cases=2, shape=(16, 16, 16))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    folder = write_phantom_dataset(901, num_cases=2, shape=(16, 16, 16))
    assert folder == tmp_path / "raw" / "Dataset901_Phantoms" and folder.is_dir()


def test_warns_about_preprocessed_data_of_the_same_id(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pre" / "Dataset901_Phantoms").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    with pytest.warns(UserWarning, match="nnUNetv2_plan_and_preprocess"):
        _small(tmp_path / "raw")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dataset_id": 0}, "dataset_id"),
        ({"dataset_id": 1000}, "dataset_id"),
        ({"dataset_id": "901"}, "dataset_id"),
        ({"num_cases": 1}, "num_cases"),
        ({"num_test_cases": -1}, "num_test_cases"),
        ({"seed": -1}, "seed"),
        ({"shape": (16, 8, 16)}, "shape"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"name": "a/b"}, "name"),
        ({"name": ""}, "name"),
        ({"noise_hu": float("inf")}, "noise_hu"),
    ],
)
def test_bad_input_raises_user_error_and_writes_nothing(tmp_path: Path, kwargs, field) -> None:
    raw = tmp_path / "raw"
    with pytest.raises(UserError, match=field):
        _small(raw, **kwargs)
    assert not raw.exists()


def test_raw_dir_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "raw"
    f.write_text("")
    with pytest.raises(UserError, match="raw_dir.*not a directory"):
        _small(f)
