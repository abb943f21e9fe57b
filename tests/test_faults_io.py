"""The fault matrix, input/output part (issue 31): output folders inside input folders, full disks, and
the atomic writer every command uses. Each case runs the ``recokd`` entry point as a user would and
asserts (with :func:`tests.test_faults.fails_cleanly`) the exit code 2, one ``recokd <command>: error:``
line naming the folder, no traceback, and checksums of what the user had; after a full disk, that no
file a later run would trust was left behind and that the same command succeeds once there is room.

Full disks are real: a small tmpfs mounted in the test's temporary folder (needs root with
CAP_SYS_ADMIN, as on the development machine; the tests skip, saying so, where mounting is not
permitted). The fast tests of :mod:`recokd.atomic_files` below need no mount: there the writer itself
raises ``OSError(ENOSPC)`` or torch's errno-less error, in place of a full disk.

The real kill of ``recokd predict`` during a prediction is ``test_killed_prediction_then_continue`` (slow).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.atomic_files import (
    PARTIAL_PREFIX,
    DiskFullError,
    atomic_path,
    atomic_paths,
    is_partial,
    partial_path,
    remove_stale_partials,
    write_text_atomic,
)
from recokd.cli import main
from recokd.errors import UserError
from tests import test_faults
from tests.deploy.test_onnx import write_case
from tests.test_faults import PREDICT, _cube, checksum, fails_cleanly, write_seg

#: the fault matrix's fixtures: the tiny results folder under nnUNet_results, one nnU-Net-named image
nnunet_env = test_faults.nnunet_env
images = test_faults.images

PAGE = 4096


# ---------------------------------------------------------------------------- small file systems


@contextlib.contextmanager
def small_filesystem(folder: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted on ``folder`` (created), unmounted afterwards; skips the test
    where mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs: mount as root is not available here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"a real full disk needs a small tmpfs; mount refused: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False, capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill ``folder``'s file system with one file until only ``leave`` bytes (whole pages) are free."""
    filler = folder / "filler.bin"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    assert abs(shutil.disk_usage(folder).free - leave) <= PAGE
    return filler


def page_bytes(*files: Path) -> int:
    """What ``files`` occupy on a tmpfs (whole pages)."""
    return sum(-(-f.stat().st_size // PAGE) * PAGE for f in files)


def no_partials(*folders: Path) -> None:
    left = [p for folder in folders if folder.is_dir() for p in folder.rglob("*") if is_partial(p.name)]
    assert not left, f"partial files left behind: {left}"


def readable_segmentations(folder: Path) -> list[str]:
    """The ``*.nii.gz`` names in ``folder``, each checked to read completely."""
    names = sorted(p.name for p in folder.glob("*.nii.gz") if not is_partial(p.name))
    for name in names:
        sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))
    return names


# ---------------------------------------------------------------------------- output inside the input


@pytest.mark.parametrize("where", ["same", "inside"])
def test_predict_output_in_the_input_folder(nnunet_env, images, capsys, where):
    out = images if where == "same" else images / "pred"
    fails_cleanly(["predict", "-i", str(images), "-o", str(out), *PREDICT], capsys,
                  ["-o", str(out), "input folder", str(images)], [images])
    assert not (images / "pred").exists()


def test_predict_onnx_output_in_the_input_folder(images, tmp_path, capsys):
    onnx = tmp_path / "m.onnx"  # never read: the folders are refused first
    fails_cleanly(["predict-onnx", "-i", str(images), "-o", str(images / "sub" / ".."), "--onnx", str(onnx)],
                  capsys, ["-o", "input folder"], [images])


def test_output_beside_the_input_is_fine(tmp_path):
    from recokd.nnunet.inputs import check_output_outside_input

    check_output_outside_input(tmp_path / "imagesTs", tmp_path / "imagesTs_pred")  # a prefix, not inside
    check_output_outside_input(tmp_path / "data" / "imagesTs", tmp_path / "data")  # input inside output
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UserError, match="is the input folder"):
        check_output_outside_input(tmp_path / "real", tmp_path / "link")


# ---------------------------------------------------------------------------- the atomic writer


def test_atomic_paths_rename_in_order_only_when_complete(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "a.nii.gz"
    b.write_text("old")
    with atomic_paths(a, b) as (pa, pb):
        assert pa.parent == pb.parent == tmp_path
        assert pa.name.startswith(PARTIAL_PREFIX)
        assert pa.name.endswith("a.npz") and pb.name.endswith("a.nii.gz")
        pa.write_text("new a")
        pb.write_text("new b")
        assert b.read_text() == "old" and not a.exists()  # nothing visible until the block ends
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "a.npz"]

    with pytest.raises(ValueError, match="writer failed"), atomic_path(b) as pb:
        pb.write_text("half")
        raise ValueError("writer failed")
    assert b.read_text() == "new b"  # the old file stays, the partial one is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "a.npz"]


def test_disk_full_from_the_writer_is_one_error_naming_the_folder(tmp_path):
    target = tmp_path / "out" / "summary.json"
    target.parent.mkdir()
    with pytest.raises(DiskFullError) as info, atomic_path(target) as partial:
        partial.write_text("{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(tmp_path / "out") in str(info.value) and "no space left on device" in str(info.value)
    assert list(target.parent.iterdir()) == []
    # errno-less writers (torch.save, OpenVINO) count as a full disk only when the disk is full
    with pytest.raises(RuntimeError, match="PytorchStreamWriter"), atomic_path(target):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


def test_disk_full_error_survives_pickling_from_a_worker(tmp_path):
    import pickle

    error = pickle.loads(pickle.dumps(DiskFullError(tmp_path)))
    assert isinstance(error, DiskFullError) and error.folder == tmp_path and str(tmp_path) in str(error)


def test_stale_partials_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f"{PARTIAL_PREFIX}{dead.stdout.strip()}-case.nii.gz"
    mine = partial_path(tmp_path / "case.nii.gz")
    user = tmp_path / ".recokd-partial-notes.txt"  # not our pattern: never touched
    for p in (stale, mine, user):
        p.write_text("x")
    assert remove_stale_partials(tmp_path) == [stale]
    assert mine.exists() and user.exists()


def test_evaluate_ignores_partial_files(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_seg(gt, "c1.nii.gz", _cube())
    write_seg(pred, "c1.nii.gz", _cube())
    (pred / f"{PARTIAL_PREFIX}123-c2.nii.gz").write_bytes(b"\x1f\x8b half")  # a killed writer's file
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text('{"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}')
    assert main(["evaluate", str(pred), str(gt), "--dataset-json", str(dataset_json), "-o",
                 str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "summary.json").is_file()


def test_write_text_atomic_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.md"
    target.write_text("old report")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)  # in place of a full disk
    with pytest.raises(DiskFullError, match=str(tmp_path)):
        write_text_atomic(target, "new report")
    monkeypatch.undo()
    assert target.read_text() == "old report" and [p.name for p in tmp_path.iterdir()] == ["results.md"]


def test_cli_names_the_folder_of_an_unexpected_enospc(monkeypatch, capsys, tmp_path):
    """An ENOSPC raised where no command wrapped it still ends in one line (the folder of its file)."""
    import recokd.evaluation.evaluate as evaluate

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x" / "f.csv"))

    monkeypatch.setattr(evaluate, "evaluate_folders", full)  # in place of a full disk
    assert main(["evaluate", str(tmp_path), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    expected = f"no space left on device: the disk holding {tmp_path / 'x'} is full"
    assert f"recokd evaluate: error: {expected}" in err


# ---------------------------------------------------------------------------- full disks, for real


def test_evaluate_on_a_full_disk(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_seg(gt, "c1.nii.gz", _cube())
    write_seg(pred, "c1.nii.gz", _cube())
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text('{"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}')
    with small_filesystem(tmp_path / "disk", 64 * 1024) as disk:
        out = disk / "ev"
        out.mkdir()
        filler = fill(disk)
        args = ["evaluate", str(pred), str(gt), "--dataset-json", str(dataset_json), "-o", str(out)]
        fails_cleanly(args, capsys, [str(out), "no space left on device"], [gt, pred])
        assert list(out.iterdir()) == []
        filler.unlink()
        assert main(args) == 0
        assert {p.name for p in out.iterdir()} == {"summary.json", "per_case.csv"}


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_export_on_a_full_disk(nnunet_env, tmp_path, capsys, fmt):
    model = nnunet_env["model"]
    with small_filesystem(tmp_path / "disk", 256 * 1024) as disk:
        out = disk / "exported"
        out.mkdir()
        filler = fill(disk, leave=2 * PAGE)  # the model's weights need more
        target = ["--openvino", str(out)] if fmt == "openvino" else ["--onnx", str(out / "m.onnx")]
        fails_cleanly(["export", str(model), *target], capsys, [str(out), "no space left on device"],
                      [model, out])
        assert list(out.iterdir()) == []  # nothing half-written, no partial file
        filler.unlink()
        assert main(["export", str(model), *target]) == 0  # no --overwrite needed: nothing was left
        capsys.readouterr()
        written = {p.name for p in out.iterdir()}
        assert written == ({"model.xml", "model.bin", "recokd.json"} if fmt == "openvino" else
                           {"m.onnx", "m.onnx.json"})


def _reference_prediction(command: list[str], out: Path, capsys) -> tuple[list[str], int]:
    """Run a prediction into ``out`` on a roomy disk: the segmentation names, and the pages of the files
    nnU-Net writes beside them (plans, dataset.json, its arguments)."""
    assert main([*command, "-o", str(out)]) == 0
    capsys.readouterr()
    side = [p for p in out.iterdir() if p.suffix == ".json"]
    return readable_segmentations(out), page_bytes(*side)


@pytest.mark.parametrize("command", ["predict", "predict-onnx",
                                     pytest.param("predict with worker pools", marks=pytest.mark.slow)])
def test_predict_on_a_full_disk_then_continue(nnunet_env, images, tmp_path, capsys, command):
    """The disk fills when the segmentation is written (room was left for nnU-Net's JSON files only):
    one line, no segmentation file; with room again, --continue-prediction completes it. With worker
    pools, the export runs in nnU-Net's spawned export process (the atomic export imported there)."""
    write_case(images, "case_b", (16, 24, 18), seed=2)
    if command == "predict":
        args = ["predict", "-i", str(images), *PREDICT]
    elif command == "predict with worker pools":
        args = ["predict", "-i", str(images), *PREDICT[:-4], "-npp", "1", "-nps", "1"]
    else:
        from recokd.deploy.onnx_export import export_onnx

        onnx = export_onnx(nnunet_env["model"], tmp_path / "m.onnx").onnx_path
        args = ["predict-onnx", "-i", str(images), "--onnx", str(onnx), "--sequential"]
    names, side = _reference_prediction(args, tmp_path / "reference", capsys)
    assert names == ["case_a.nii.gz", "case_b.nii.gz"]
    with small_filesystem(tmp_path / "disk", 256 * 1024) as disk:
        out = disk / "pred"
        filler = fill(disk, leave=side)
        fails_cleanly([*args, "-o", str(out)], capsys, [str(out), "no space left on device"], [images])
        assert readable_segmentations(out) == []
        no_partials(out)
        complete_json_files(out)
        filler.unlink()
        assert main([*args, "-o", str(out), "--continue-prediction"]) == 0
        assert readable_segmentations(out) == names
        for name in names:
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / name)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "reference" / name)))
            assert np.array_equal(a, b)


def complete_json_files(folder: Path) -> None:
    """Every file left in ``folder`` is a complete JSON file (nnU-Net's dataset.json, plans.json, ...)."""
    for f in folder.iterdir():
        assert f.suffix == ".json" and json.loads(f.read_text()) is not None, f


def test_predict_on_a_disk_full_from_the_start(nnunet_env, images, tmp_path, capsys):
    """No room even for nnU-Net's JSON files beside the predictions: one line, no empty file left."""
    with small_filesystem(tmp_path / "disk", 64 * 1024) as disk:
        out = disk / "pred"
        out.mkdir()
        fill(disk)
        fails_cleanly(["predict", "-i", str(images), *PREDICT, "-o", str(out)], capsys,
                      [str(out), "no space left on device"], [images])
        assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------- a real kill


def _recokd() -> list[str]:
    exe = Path(sys.executable).with_name("recokd")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "recokd.cli"]


@pytest.mark.slow
def test_killed_prediction_then_continue(nnunet_env, tmp_path, capsys):
    """SIGKILL of `recokd predict` (a subprocess; probabilities saved too) while it writes a case, then
    `--continue-prediction`, then `recokd evaluate` against an uninterrupted run: every case is
    predicted, readable and identical to the uninterrupted run, nothing partial is left."""
    images = tmp_path / "images"
    cases = [f"case_{i}" for i in range(4)]
    for i, case in enumerate(cases):
        write_case(images, case, (32, 24, 24), seed=i)
    before = checksum(images)
    # the same kernels in every run (recokd's per-layer choice is timed, so it may differ between runs)
    predict = ["predict", "-i", str(images), *PREDICT, "--save-probabilities", "--disable-tta",
               "--stock-cpu-convs"]
    reference, out = tmp_path / "reference", tmp_path / "pred"
    assert main([*predict, "-o", str(reference)]) == 0

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([*_recokd(), *predict, "-o", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    caught = None
    deadline = time.monotonic() + 150
    while proc.poll() is None and time.monotonic() < deadline:  # kill while a case is being written
        names = [p.name for p in out.iterdir()] if out.is_dir() else []
        partial = next((n for n in names if is_partial(n)), None)
        if partial and any(n.startswith("case_") and n.endswith(".nii.gz") for n in names):
            os.killpg(proc.pid, signal.SIGKILL)
            caught = partial
            break
        time.sleep(0.0005)
    if proc.poll() is None and caught is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert caught is not None, "the prediction ended before a write could be caught"
    assert proc.returncode == -signal.SIGKILL
    assert (out / caught).exists()  # the killed writer's partial file, under a name nobody trusts
    finished = readable_segmentations(out)  # whatever is there under a case's name is complete
    assert 1 <= len(finished) < len(cases)

    assert main([*predict, "-o", str(out), "--continue-prediction"]) == 0
    assert readable_segmentations(out) == [f"{c}.nii.gz" for c in cases]
    no_partials(out)  # the killed run's partial file was removed
    capsys.readouterr()
    dataset_json = nnunet_env["model"] / "dataset.json"
    assert main(["evaluate", str(out), str(reference), "--dataset-json", str(dataset_json), "-o",
                 str(tmp_path / "ev")]) == 0
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(reference / f"{case}.nii.gz")))
        assert np.array_equal(a, b), case
        with np.load(out / f"{case}.npz") as p, np.load(reference / f"{case}.npz") as r:
            assert np.array_equal(p["probabilities"], r["probabilities"]), case
    assert checksum(images) == before
