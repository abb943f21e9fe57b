"""What int8 costs, measured (issue 13): trained models predicted on held-out cases by PyTorch,
OpenVINO fp32 and OpenVINO int8 (``recokd quantize``), scored by ``recokd evaluate``.

    python benchmarks/int8_accuracy.py -d DATASET -i IMAGES_TS -l LABELS_TS -o OUT \\
        NAME=RESULTS_FOLDER [NAME=RESULTS_FOLDER ...] [--calibration-cases 8] [--preset performance]

For each model: ``recokd quantize`` (calibration tiles from the fold's preprocessed *training*
cases), then ``recokd predict`` with the torch backend, ``--backend openvino`` (fp32) and
``--backend openvino --openvino <int8>``, mirroring off, then ``recokd evaluate`` of each. Prints
mean Dice, small-structure Dice (the dataset's "small" group where ``recokd evaluate`` reports one)
and the voxel agreement of int8 with fp32; writes ``OUT/int8_accuracy.json`` and ``.md``. Finished
steps are skipped on a re-run (their output folders exist). Thresholds of issue 13: int8 loses
<= 0.01 mean Dice and <= 0.02 small-structure Dice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from recokd.cli import main as recokd
from recokd.report_paths import shown_path


def _run(args: list[str]) -> None:
    rc = recokd(args)
    if rc != 0:
        raise SystemExit(f"recokd {' '.join(args)} failed with exit code {rc}")


def _scores(summary_file: Path) -> tuple[float, float | None]:
    summary = json.loads(summary_file.read_text())

    def mean(value):
        return value.get("mean") if isinstance(value, dict) else value

    small = (summary.get("groups") or {}).get("small") or {}
    return float(mean(summary["foreground_mean"]["dice"])), mean(small.get("dice")) if small else None


def _agreement(a: Path, b: Path) -> float:
    same = total = 0
    for f in sorted(a.glob("*.nii.gz")):
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(b / f.name)))
        same += int((x == y).sum())
        total += x.size
    return same / total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="NAME=RESULTS_FOLDER")
    ap.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    ap.add_argument("-i", dest="images", required=True, type=Path, help="held-out images (nnU-Net naming)")
    ap.add_argument("-l", dest="labels", required=True, type=Path, help="their reference segmentations")
    ap.add_argument("-o", dest="out", required=True, type=Path)
    ap.add_argument("--dataset-json", type=Path, default=None, help="dataset.json (class names and groups)")
    ap.add_argument("--calibration-cases", type=int, default=8)
    ap.add_argument("--preset", default="performance", choices=("performance", "mixed"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    rows = []
    for entry in args.models:
        name, _, folder = entry.partition("=")
        folder = Path(folder)
        trainer, plans, configuration = folder.name.split("__")
        out = args.out / name
        int8 = out / "int8_model"
        if not (int8 / "recokd.json").is_file():
            _run(["quantize", str(folder), "-o", str(int8), "--calibration-cases",
                  str(args.calibration_cases), "--preset", args.preset])
        base = ["predict", "-i", str(args.images), "-d", args.dataset, "-c", configuration, "-tr", trainer,
                "-p", plans, "-f", "0", "--device", "cpu", "-npp", "0", "-nps", "0", "--disable-tta"]
        backends = {"torch": [], "openvino fp32": ["--backend", "openvino", "--threads", str(args.threads)],
                    "openvino int8": ["--backend", "openvino", "--openvino", str(int8), "--threads",
                                      str(args.threads)]}
        scores = {}
        for backend, extra in backends.items():
            pred, ev = out / backend.replace(" ", "_"), out / f"eval_{backend.replace(' ', '_')}"
            if not (ev / "summary.json").is_file():
                _run([*base, "-o", str(pred), "--overwrite", *extra])
                evaluate = ["evaluate", str(pred), str(args.labels), "-o", str(ev), "--overwrite"]
                if args.dataset_json:
                    evaluate += ["--dataset-json", str(args.dataset_json)]
                _run(evaluate)
            scores[backend] = _scores(ev / "summary.json")
        agree = _agreement(out / "openvino_fp32", out / "openvino_int8")
        cal = json.loads((int8 / "recokd.json").read_text())["quantization"]["calibration"]
        cal["folder"] = shown_path(cal["folder"], Path.cwd())  # the report's paths: from where it ran
        rows.append({"model": name, "folder": shown_path(folder, Path.cwd()), "scores": scores,
                     "int8_vs_fp32_voxel_agreement": agree, "calibration": cal, "preset": args.preset})

    lines = ["| model | torch Dice | OpenVINO fp32 | int8 | int8 - fp32 | torch small | fp32 small | "
             "int8 small | int8 - fp32 small | voxels int8 = fp32 |", "|---|" + "---:|" * 9]
    for r in rows:
        s = r["scores"]
        (dt, st), (df, sf), (di, si) = s["torch"], s["openvino fp32"], s["openvino int8"]
        small = (f"{st:.3f} | {sf:.3f} | {si:.3f} | {si - sf:+.3f}" if None not in (st, sf, si)
                 else "- | - | - | -")
        lines.append(f"| {r['model']} | {dt:.3f} | {df:.3f} | {di:.3f} | {di - df:+.3f} | {small} | "
                     f"{r['int8_vs_fp32_voxel_agreement']:.2%} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_accuracy.json").write_text(json.dumps(rows, indent=2) + "\n")
    here = str(Path.cwd()) + "/"  # the command as run from here, naming no developer's machine
    command = "python benchmarks/int8_accuracy.py " + " ".join(a.replace(here, "") for a in sys.argv[1:])
    (args.out / "int8_accuracy.md").write_text(
        f"# int8 accuracy\n\n`{command}`\n\nMirroring off, fold 0, {args.calibration_cases} calibration "
        f"cases (4 tiles each, fold 0 training cases), NNCF preset {args.preset}.\n\n{table}\n")
    assert np.isfinite([v for r in rows for sc in r["scores"].values() for v in sc if v is not None]).all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
