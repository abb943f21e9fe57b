"""``recokd phantoms``: write a synthetic CT phantom dataset in nnU-Net raw format."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

_DESCRIPTION = """\
Write Dataset<ID>_<NAME> into nnU-Net's raw folder ($nnUNet_raw or --raw): CT-like abdominal
phantoms with one large organ (liver), three medium organs (spleen, kidneys) and three small
structures (vessel, adrenal, liver lesion), in the layout nnU-Net v2 expects. Shape and spacing
are in array order z y x: --spacing 2.5 1 1 means 2.5 mm slices. Test cases go to imagesTs/, their
labels to labelsTs/ (nnU-Net ignores labelsTs; it is there for scoring predictions).
"""


def register(subparsers: Any) -> None:
    """Add the ``phantoms`` sub-command to ``subparsers`` (an argparse sub-parser action)."""
    p = subparsers.add_parser(
        "phantoms",
        help="write a synthetic CT phantom dataset in nnU-Net raw format",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(p, "Phantoms")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("Z", "Y", "X"),
                   help="voxels per axis, each >= 16 (default: 64 64 64)")
    p.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("Z", "Y", "X"),
                   help="voxel size in mm (default: 1 1 1)")
    p.add_argument("--noise", type=float, default=20.0, metavar="HU",
                   help="image noise standard deviation in HU (default: 20)")
    p.add_argument("--small-scale", type=float, default=1.0, metavar="S",
                   help="multiply the radii of the small structures (vessel, adrenal, lesion) by S, "
                   "0.5..4; at a 32^3 grid, 2 gives them their 64^3 voxel sizes (default: 1)")
    p.set_defaults(func=run)


def add_dataset_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """The options every dataset writer shares: ``--id --cases --test-cases --seed --name --raw --overwrite``
    (``name``: the default dataset name)."""
    p.add_argument("--id", dest="dataset_id", type=int, required=True, metavar="ID",
                   help="nnU-Net dataset id, 1..999 (folder Dataset<ID:03d>_<NAME>)")
    p.add_argument("--cases", type=int, default=40, help="training cases (default: 40)")
    p.add_argument("--test-cases", type=int, default=0,
                   help="held-out cases in imagesTs/labelsTs (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--name", default=name, help=f"dataset name and case prefix (default: {name})")
    p.add_argument("--raw", default=None, metavar="DIR",
                   help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing folder of the same name (deletes only that folder)")


def print_next_steps(folder: Path, dataset_id: int) -> None:
    """Where nnU-Net must look for the written ``folder`` (when ``$nnUNet_raw`` is elsewhere), and the
    planning command."""
    raw_env = os.environ.get("nnUNet_raw", "")
    if not raw_env or os.path.realpath(raw_env) != os.path.realpath(folder.parent):
        print(f"note: nnU-Net reads datasets from $nnUNet_raw; "
              f"set nnUNet_raw={folder.parent} before planning")
    print(f"next: nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity")


def run(args: argparse.Namespace) -> int:
    """Write the dataset described by ``args`` and print a summary; returns the exit code."""
    from recokd.data.phantoms import PHANTOM_CLASSES, write_phantom_dataset

    folder = write_phantom_dataset(
        args.dataset_id,
        num_cases=args.cases,
        num_test_cases=args.test_cases,
        seed=args.seed,
        shape=tuple(args.shape),
        spacing=tuple(args.spacing),
        name=args.name,
        raw_dir=args.raw,
        overwrite=args.overwrite,
        noise_hu=args.noise,
        small_scale=args.small_scale,
        progress=True,
    )
    meta = json.loads((folder / "dataset.json").read_text())["reco_kd_phantoms"]
    means = meta["mean_voxels_per_case"]
    shape = "x".join(str(s) for s in meta["shape_zyx"])
    spacing = " x ".join(f"{s:g}" for s in meta["spacing_zyx_mm"])
    test = f" + {args.test_cases} test (imagesTs, labelsTs)" if args.test_cases else ""
    print(f"wrote {args.cases} training{test} cases to {folder}")
    print(f"  shape (z, y, x) {shape} voxels, spacing {spacing} mm, seed {args.seed}")
    print("  label  name            size    mean voxels per training case")
    print(f"  {0:>5}  {'background':<14}  {'':<6}  {means['background']:>10.0f}")
    for c in PHANTOM_CLASSES:
        print(f"  {c.label:>5}  {c.name:<14}  {c.size:<6}  {means[c.name]:>10.1f}")
    print_next_steps(folder, args.dataset_id)
    return 0
