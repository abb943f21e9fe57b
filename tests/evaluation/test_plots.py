"""The PNG figures: box plot, overlay, Dice vs latency (real PNGs of the expected size)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from recokd.errors import UserError
from recokd.evaluation.evaluate import EvaluationResult
from recokd.evaluation.metrics import compute_case_metrics
from recokd.evaluation.plots import default_slice, dice_boxplot, dice_vs_latency, overlay_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and len(data) > 3000
    return struct.unpack(">II", data[16:24])


def volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gt = np.zeros((6, 16, 16), dtype=np.uint8)
    gt[1:5, 3:10, 3:10] = 1
    gt[4, 11:14, 11:14] = 2                 # slice 4 holds the most foreground (49 + 9 voxels)
    pred = np.roll(gt, 1, axis=2)
    image = gt.astype(np.float32) * 100 + np.random.default_rng(0).normal(0, 5, gt.shape).astype(np.float32)
    return image, gt, pred


def result() -> EvaluationResult:
    _, gt, pred = volumes()
    labels = {"organ": 1, "dot": 2}
    per_case = {f"c{i}": compute_case_metrics(np.roll(pred, i, axis=1), gt, labels, (2.0, 1.0, 1.0))
                for i in range(4)}
    geometry = {c: {"shape": list(gt.shape), "spacing_mm": [2.0, 1.0, 1.0]} for c in per_case}
    return EvaluationResult(Path("pred"), Path("gt"), labels, per_case, geometry, {"organ": 1.0, "dot": 1.0})


def test_dice_boxplot(tmp_path: Path) -> None:
    out = dice_boxplot(result(), tmp_path / "box.png")
    assert out == tmp_path / "box.png"
    width, height = png_size(out)
    assert (width, height) == (400, 400)    # 0.9 in per class + 1.5 in (min 4 in) x 4 in at 100 dpi
    with pytest.raises(UserError, match="overwrite"):
        dice_boxplot(result(), out)
    dice_boxplot(result(), out, overwrite=True)


def test_default_slice_has_most_foreground() -> None:
    _, gt, pred = volumes()
    assert default_slice(gt, pred) == 4
    empty = np.zeros_like(gt)
    assert default_slice(empty, pred) == 4 and default_slice(empty, empty) == 3


def test_overlay_png(tmp_path: Path) -> None:
    image, gt, pred = volumes()
    out = overlay_png(image, gt, pred, (2.0, 1.0, 1.0), tmp_path / "case.png",
                      class_names={1: "organ", 2: "dot"}, title="case")
    assert png_size(out) == (1200, 460)
    before = out.read_bytes()
    with pytest.raises(UserError, match="overwrite"):
        overlay_png(image, gt, pred, (2.0, 1.0, 1.0), out)
    overlay_png(image, gt, pred, (2.0, 1.0, 1.0), out, slice_index=0, window=(-50, 150), overwrite=True)
    assert out.read_bytes() != before       # another slice, another picture
    with pytest.raises(UserError, match="slice"):
        overlay_png(image, gt, pred, (2.0, 1.0, 1.0), tmp_path / "x.png", slice_index=6)
    with pytest.raises(UserError, match="one shape"):
        overlay_png(image, gt[:3], pred, (2.0, 1.0, 1.0), tmp_path / "x.png")


def test_dice_vs_latency(tmp_path: Path) -> None:
    points = [("teacher", 12.0, 0.81), ("student t=2", 0.9, 0.74),
              {"name": "student KD", "latency_s": 0.4, "dice": 0.79}]
    out = dice_vs_latency(points, tmp_path / "dl.png", title="cpu, 4 threads, no mirroring")
    assert png_size(out) == (600, 450)
    with pytest.raises(UserError, match="overwrite"):
        dice_vs_latency(points, out)
    with pytest.raises(UserError, match=r"points\[0\] \(a\): latency"):
        dice_vs_latency([("a", 0.0, 0.5)], tmp_path / "bad.png")
    with pytest.raises(UserError, match="Dice must be in"):
        dice_vs_latency([("a", 1.0, 81.0)], tmp_path / "bad.png")
    with pytest.raises(UserError, match="at least one"):
        dice_vs_latency([], tmp_path / "bad.png")
    with pytest.raises(UserError, match=".png"):
        dice_vs_latency(points, tmp_path / "dl.jpg")
    assert not (tmp_path / "bad.png").exists()
