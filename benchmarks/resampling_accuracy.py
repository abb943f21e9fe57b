"""What ``recokd predict --resampling torch`` (and tile step 0.75) cost in accuracy, on anisotropic phantoms.

The trained models of ``benchmarks/unlabelled_first_look.py`` (teacher and t=3 students, planned and
trained at 1 mm on 32^3 phantoms) segment that study's 16 held-out test phantoms *acquired* at
0.7 x 0.7 x 2.5 mm: each test image resampled with SimpleITK (linear; its label nearest neighbour)
from 1 mm to 46 x 46 x 13 voxels of 0.7 x 0.7 x 2.5 mm. nnU-Net therefore resamples every image to
the plan's 1 mm before the network (separately along z: the spacing ratio is above 3) and the class
maps back after it. Each model predicts twice, with nnU-Net's default resampling and with
``--resampling torch`` (one fold, no mirroring), and both are scored against the resampled ground
truth (``recokd evaluate``).

A third variant adds ``--step-size 0.75`` (fewer overlapping tiles: 2 instead of 3 per axis where the
volume is 1.5 patches wide). Reported per model and variant: voxel agreement with the default path's
segmentation (all voxels of all cases), mean Dice against the ground truth and its difference from
the default's. Issue 29's thresholds: agreement >= 99.5%, |Dice difference| <= 0.005.

    python benchmarks/resampling_accuracy.py [--study DIR] [--out DIR]

Needs the first-look study's data (``DIR/data``, not committed: run that study first; it resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPACING_XYZ = (0.7, 0.7, 2.5)
FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: recokd predict options of each variant; "nnunet" (nnU-Net's defaults) is the reference
VARIANTS = {"nnunet": [], "torch": ["--resampling", "torch"],
            "torch_step075": ["--resampling", "torch", "--step-size", "0.75"]}
VARIANT_TEXT = {"nnunet": "nnU-Net's resampling, step 0.5 (reference)", "torch": "--resampling torch",
                "torch_step075": "--resampling torch --step-size 0.75"}


def run(command: list[str], env: dict[str, str]) -> None:
    print(f"+ {shlex.join(command)}", flush=True)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)


def acquire_anisotropic(images: Path, labels: Path, out: Path) -> None:
    """Every test image/label resampled to :data:`SPACING_XYZ` over the same physical extent."""
    import SimpleITK as sitk

    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for label_file in sorted(labels.glob("*.nii.gz")):
        case = label_file.name[:-len(".nii.gz")]
        for source, target, interpolator in (
                (images / f"{case}_0000.nii.gz", out / "images" / f"{case}_0000.nii.gz", sitk.sitkLinear),
                (label_file, out / "labels" / label_file.name, sitk.sitkNearestNeighbor)):
            image = sitk.ReadImage(str(source))
            extent = [n * s for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
            size = [max(1, round(e / s)) for e, s in zip(extent, SPACING_XYZ, strict=True)]
            corners = zip(image.GetOrigin(), image.GetSpacing(), SPACING_XYZ, strict=True)
            origin = [o - s0 / 2 + s1 / 2 for o, s0, s1 in corners]  # the same first voxel corner
            resampled = sitk.Resample(image, size, sitk.Transform(), interpolator, origin, SPACING_XYZ,
                                      image.GetDirection(), 0, image.GetPixelID())
            sitk.WriteImage(resampled, str(target), useCompression=True)


def models_of(study: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """The study's trained model folders and the nnUNet_* folders each lives in."""
    data = study / "data"
    main_env = {k: str(data / k) for k in FOLDERS}
    distil_env = {k: str(data / "distil" / k) for k in FOLDERS}
    candidates = {
        "teacher": (data / "nnUNet_results/Dataset821_P32s2Unl/"
                           "nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres", main_env),
        "labelled": (data / "nnUNet_results/Dataset822_P32s2UnlFew/"
                            "nnUNetTrainerShortNoDA__nnUNetPlans_recokd_t3__3d_fullres", main_env),
        "unlabelled": (data / "nnUNet_results/Dataset822_P32s2UnlFew/"
                              "nnUNetTrainerReCoKDNoDA__nnUNetPlans_recokd_t3__3d_fullres", main_env),
        "label-free": (data / "distil/nnUNet_results/Dataset821_P32s2Unl/"
                              "nnUNetTrainerReCoKDNoDA__nnUNetPlans_recokd_t3__3d_fullres", distil_env),
        "pseudo": (data / "nnUNet_results/Dataset823_P32s2UnlPseudo/"
                          "nnUNetTrainerShortNoDA__nnUNetPlans_recokd_t3__3d_fullres", main_env),
    }
    return {name: c for name, c in candidates.items() if (c[0] / "fold_0/checkpoint_final.pth").is_file()}


def agreement(a: Path, b: Path) -> tuple[int, int]:
    """(identical voxels, all voxels) over the cases of two prediction folders."""
    import SimpleITK as sitk

    same = total = 0
    for file in sorted(a.glob("*.nii.gz")):
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(file)))
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(b / file.name)))
        same, total = same + int((x == y).sum()), total + x.size
    return same, total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", type=Path, default=ROOT / "benchmarks/results/unlabelled-first-look")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/deploy")
    args = p.parse_args(argv)
    study, out = args.study.resolve(), args.out.resolve()
    raw = study / "data/nnUNet_raw/Dataset821_P32s2Unl"
    if not (raw / "labelsTs").is_dir():
        raise SystemExit(f"{raw / 'labelsTs'} missing: run benchmarks/unlabelled_first_look.py first")
    work = study / "data/anisotropic"
    if not (work / "labels").is_dir():
        acquire_anisotropic(raw / "imagesTs", raw / "labelsTs", work)
    env = {**os.environ, "nnUNet_def_n_proc": "1", "nnUNet_compile": "0", "PYTHONWARNINGS": "ignore"}
    rows = {}
    for name, (model, model_env) in models_of(study).items():
        trainer, plans, config = model.name.split("__")
        scores = {}
        for variant, extra in VARIANTS.items():
            predictions = work / "predictions" / f"{name}_{variant}"
            summary = predictions / "recokd_eval/summary.json"
            if not summary.is_file():
                run([str(BIN / "recokd"), "predict", "-i", str(work / "images"), "-o", str(predictions),
                     "-d", model.parent.name, "-c", config, "-f", "0", "-tr", trainer, "-p", plans,
                     "--device", "cpu", "--disable-tta", *extra, "-npp", "0", "-nps", "0",
                     "--overwrite"], {**env, **model_env})
                run([str(BIN / "recokd"), "evaluate", str(predictions), str(work / "labels"),
                     "--dataset-json", str(raw / "dataset.json")], env)
            ev = json.loads(summary.read_text())
            same, total = agreement(work / "predictions" / f"{name}_nnunet", predictions)
            scores[variant] = {"dice": float(ev["foreground_mean"]["dice"]),
                               "small_dice": float(ev["groups"]["small"]["dice"]), "agreement": same / total}
        rows[name] = scores
    lines = ["# Faster inference paths vs nnU-Net's defaults, anisotropic phantoms\n",
             "The first-look study's teacher and t=3 students (trained at 1 mm, see "
             "benchmarks/results/unlabelled-first-look) on its 16 test phantoms acquired at "
             "0.7 x 0.7 x 2.5 mm (46 x 46 x 13 voxels); one fold, no mirroring. Each variant against "
             "nnU-Net's default path (its resampling, tile step 0.5): voxel agreement of the segmentations "
             "and mean Dice against the ground truth. Thresholds (issue 29): agreement >= 99.5%, "
             "|Dice difference| <= 0.005.\n",
             "| model | variant | voxel agreement with the default | mean Dice | difference | "
             "small-structure Dice | thresholds |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, scores in rows.items():
        base = scores["nnunet"]["dice"]
        for variant, r in scores.items():
            diff = r["dice"] - base
            met = "" if variant == "nnunet" else \
                ("met" if r["agreement"] >= 0.995 and abs(diff) <= 0.005 else "missed")
            lines.append(f"| {name} | {VARIANT_TEXT[variant]} | {r['agreement']:.2%} | {r['dice']:.4f} | "
                         f"{diff:+.4f} | {r['small_dice']:.3f} | {met} |")
    lines.append("\nCommand: `python benchmarks/resampling_accuracy.py` (after "
                 "benchmarks/unlabelled_first_look.py)")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "resampling_accuracy.md").write_text(text)
    (out / "resampling_accuracy.json").write_text(json.dumps(rows, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
