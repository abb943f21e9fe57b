"""Tests for ``recokd atlas-dataset`` (recokd.data.atlas): real anatomy from a template and its atlas.

Most tests read Debian's mricron-data files (Colin27 + AAL) and are skipped, with the reason, where the
package is not installed (``.ci/run`` installs it when apt is available).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.cli import main
from recokd.data import atlas
from recokd.data.atlas import (
    DEFAULT_ATLAS,
    DEFAULT_REGIONS,
    DEFAULT_TEMPLATE,
    AtlasSampler,
    Deformation,
    load_atlas_pair,
    write_atlas_dataset,
)
from recokd.errors import UserError

needs_mricron = pytest.mark.skipif(
    not (DEFAULT_TEMPLATE.is_file() and DEFAULT_ATLAS.is_file()),
    reason=f"needs {DEFAULT_TEMPLATE} and {DEFAULT_ATLAS} (apt-get install mricron-data)",
)
CASES, TEST_CASES = 3, 2


@pytest.fixture(autouse=True)
def _no_nnunet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)


def _write(raw: Path, seed: int = 0, **kwargs) -> Path:
    return write_atlas_dataset(900, num_cases=CASES, num_test_cases=TEST_CASES, seed=seed, raw_dir=raw,
                               **kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (DEFAULT_TEMPLATE.is_file() and DEFAULT_ATLAS.is_file()):
        pytest.skip("needs mricron-data (apt-get install mricron-data)")
    return _write(tmp_path_factory.mktemp("raw"))


def _cases(folder: Path) -> list[tuple[Path, Path]]:
    """``(image, labels)`` file pairs of every training and test case."""
    out = []
    for split in ("Tr", "Ts"):
        for lab in sorted((folder / f"labels{split}").iterdir()):
            out.append((folder / f"images{split}" / lab.name.replace(".nii.gz", "_0000.nii.gz"), lab))
    return out


def _arr(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@needs_mricron
def test_image_and_labels_share_geometry(dataset: Path) -> None:
    template = sitk.ReadImage(str(DEFAULT_TEMPLATE))
    pairs = _cases(dataset)
    assert len(pairs) == CASES + TEST_CASES
    shape = json.loads((dataset / "dataset.json").read_text())["reco_kd_atlas"]["shape_zyx"]
    for image_path, label_path in pairs:
        image, labels = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
        for what in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(image, what)() == pytest.approx(getattr(labels, what)()), what
        assert image.GetSize() == tuple(reversed(shape))
        assert image.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
        assert image.GetDirection() == pytest.approx(template.GetDirection())
        assert image.GetPixelID() == sitk.sitkFloat32 and labels.GetPixelID() == sitk.sitkUInt8


@needs_mricron
def test_undeformed_case_is_the_atlas_at_the_written_physical_positions() -> None:
    """With every random change off, the labels are the atlas resampled (by SimpleITK, nearest neighbour)
    onto the case's header: the crop's origin and direction place it where it came from."""
    pair = load_atlas_pair()
    off = Deformation(rotation_deg=0, scale=0, translation_mm=0, elastic_mm=0, bias=0, gamma=0, noise=0)
    sampler = AtlasSampler(pair, 2.0, 6.0, off)
    _, labels = sampler.case(np.random.default_rng(0))
    ref = sitk.Image([int(n) for n in reversed(sampler.shape)], sitk.sitkUInt8)
    ref.SetSpacing((2.0, 2.0, 2.0))
    ref.SetOrigin(sampler.origin_xyz())
    ref.SetDirection(pair.reference.GetDirection())
    atlas_img = sitk.ReadImage(str(DEFAULT_ATLAS))
    resampled = sitk.Resample(atlas_img, ref, sitk.Transform(), sitk.sitkNearestNeighbor)
    expected_raw = sitk.GetArrayFromImage(resampled)
    lut = np.zeros(256, dtype=np.uint8)
    for k, (value, _) in enumerate(pair.regions, start=1):
        lut[value] = k
    expected = lut[expected_raw]
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) == set(range(len(DEFAULT_REGIONS) + 1))


@needs_mricron
def test_every_class_present_in_every_case(dataset: Path) -> None:
    dj = json.loads((dataset / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, **{n: k for k, n in enumerate(DEFAULT_REGIONS, start=1)}}
    assert dj["numTraining"] == CASES and dj["channel_names"] == {"0": "T1"}
    for _, label_path in _cases(dataset):
        counts = np.bincount(_arr(label_path).ravel(), minlength=13)
        assert len(counts) == 13 and (counts > 0).all(), (label_path.name, counts)
    means = dj["reco_kd_atlas"]["mean_voxels_per_case"]
    assert 100 < min(means[n] for n in DEFAULT_REGIONS) < max(means[n] for n in DEFAULT_REGIONS) < 2000


@needs_mricron
def test_cases_differ_and_look_like_the_template(dataset: Path) -> None:
    arrays = [_arr(image) for image, _ in _cases(dataset)]
    labels = [_arr(lab) for _, lab in _cases(dataset)]
    for i in range(1, len(arrays)):
        assert not np.array_equal(arrays[0], arrays[i]) and not np.array_equal(labels[0], labels[i])
    for image, lab in zip(arrays, labels, strict=True):
        # deep grey matter is brighter than the CSF of the ventricles next to it: labelled voxels sit in the
        # upper part of the intensity range of the crop
        assert np.median(image[lab > 0]) > np.percentile(image, 30)


@needs_mricron
def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path, dataset: Path) -> None:
    again = _write(tmp_path / "a")
    for (img_a, lab_a), (img_b, lab_b) in zip(_cases(dataset), _cases(again), strict=True):
        assert img_a.read_bytes() == img_b.read_bytes() and lab_a.read_bytes() == lab_b.read_bytes()
    assert (dataset / "dataset.json").read_text() == (again / "dataset.json").read_text()
    other = _write(tmp_path / "b", seed=1)
    for (img_a, lab_a), (img_b, lab_b) in zip(_cases(dataset), _cases(other), strict=True):
        assert not np.array_equal(_arr(img_a), _arr(img_b))
        assert not np.array_equal(_arr(lab_a), _arr(lab_b))


@needs_mricron
def test_nnunet_verify_dataset_integrity_accepts_it(dataset: Path, capfd: pytest.CaptureFixture) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any error (geometry included)
    out = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in out
    assert "Error" not in out and "Warning" not in out


def test_missing_default_files_name_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "templates" / "ch2.nii.gz"
    monkeypatch.setattr(atlas, "DEFAULT_TEMPLATE", gone)
    with pytest.raises(UserError, match="apt-get install mricron-data") as e:
        load_atlas_pair(template=gone, atlas=tmp_path / "aal.nii.gz")
    assert "\n" not in str(e.value) and str(gone) in str(e.value)
    with pytest.raises(UserError, match="does not exist") as e:  # a user's own path: no package hint
        load_atlas_pair(template=tmp_path / "mine.nii.gz", atlas=tmp_path / "aal.nii.gz")
    assert "apt-get" not in str(e.value)


def test_missing_package_through_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    gone = tmp_path / "ch2.nii.gz"
    monkeypatch.setattr(atlas, "DEFAULT_TEMPLATE", gone)
    code = main(["atlas-dataset", "--id", "900", "--cases", "2", "--raw", str(tmp_path / "raw"),
                 "--template", str(gone)])
    err = capsys.readouterr().err
    assert code == 2 and "apt-get install mricron-data" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "raw").exists()


def _copy_atlas(tmp_path: Path, edit) -> Path:
    """A copy of the package's atlas (and its name table) after ``edit(image) -> image``."""
    img = edit(sitk.ReadImage(str(DEFAULT_ATLAS)))
    out = tmp_path / "aal.nii.gz"
    sitk.WriteImage(img, str(out))
    (tmp_path / "aal.nii.txt").write_text(DEFAULT_ATLAS.with_name("aal.nii.txt").read_text())
    return out


def _shifted(img: sitk.Image) -> sitk.Image:
    img.SetOrigin(tuple(o + 4.0 for o in img.GetOrigin()))
    return img


def _cropped(img: sitk.Image) -> sitk.Image:
    return img[:, 1:, :]


def _labels_moved_off_the_head(img: sitk.Image) -> sitk.Image:
    """Same header, content moved so that the subcortical labels sit outside the head."""
    arr = np.roll(sitk.GetArrayFromImage(img), 100, axis=1)  # 100 mm along y: in front of the face
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


@needs_mricron
@pytest.mark.parametrize(("edit", "message"), [
    (_shifted, "not on the grid .*origin"),
    (_cropped, "not on the grid .*size"),
    (_labels_moved_off_the_head, "lie on tissue .* not aligned"),
])
def test_misaligned_atlas_is_refused(tmp_path: Path, edit, message: str) -> None:
    bad = _copy_atlas(tmp_path, edit)
    with pytest.raises(UserError, match=message) as e:
        write_atlas_dataset(900, num_cases=2, atlas=bad, raw_dir=tmp_path / "raw")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


@needs_mricron
def test_regions_by_value_or_name_and_unknown_ones(tmp_path: Path) -> None:
    pair = load_atlas_pair(regions=["Thalamus_L", "78"])
    assert pair.regions == ((77, "Thalamus_L"), (78, "Thalamus_R"))
    assert set(np.unique(pair.labels)) == {0, 1, 2}
    for regions, message in ((["Thalamus"], "neither an atlas value nor a region name"),
                             (["200"], "has no voxel"), (["77", "Thalamus_L"], "listed twice")):
        with pytest.raises(UserError, match=message):
            load_atlas_pair(regions=regions)


def _one_voxel_region(img: sitk.Image) -> sitk.Image:
    """Same grid, plus a region 200 of one voxel in the middle of the left putamen (on tissue)."""
    arr = sitk.GetArrayFromImage(img)
    z, y, x = np.argwhere(arr == 73).mean(axis=0).round().astype(int)
    arr[z, y, x] = 200
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


@needs_mricron
def test_spacing_too_coarse_for_a_region_is_refused(tmp_path: Path) -> None:
    tiny = _copy_atlas(tmp_path, _one_voxel_region)
    with pytest.raises(UserError, match="no voxel of region_200.*finer spacing"):
        write_atlas_dataset(900, num_cases=2, spacing=4.0, atlas=tiny, regions=["Putamen_L", "200"],
                            raw_dir=tmp_path / "raw")
    assert not any((tmp_path / "raw").iterdir())  # no half-written dataset (nor its temporary folder)


@needs_mricron
def test_command_prints_the_classes_and_the_smallest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["atlas-dataset", "--id", "905", "--cases", "2", "--spacing", "3", "--seed", "4",
                 "--raw", str(tmp_path), "--regions", "Pallidum_L", "Putamen_L"]) == 0
    out = capsys.readouterr().out
    dj = json.loads((tmp_path / "Dataset905_Subcortical" / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "Pallidum_L": 1, "Putamen_L": 2}
    assert dj["reco_kd_atlas"]["spacing_mm"] == 3.0 and dj["reco_kd_atlas"]["seed"] == 4
    assert "smallest: Pallidum_L" in out and "Putamen_L" in out
