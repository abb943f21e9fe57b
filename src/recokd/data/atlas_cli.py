"""``recokd atlas-dataset``: an nnU-Net raw dataset of real anatomy from an MRI template and its atlas."""

from __future__ import annotations

import argparse
import json
from typing import Any

from recokd.data.cli import add_dataset_arguments, print_next_steps

_DESCRIPTION = """\
Write Dataset<ID>_<NAME> into nnU-Net's raw folder ($nnUNet_raw or --raw): crops of a T1 MRI template
around chosen regions of an atlas drawn on the same grid (the classes), resampled to an isotropic
spacing, each case deformed at random (small affine + smooth elastic field, the same for image and
labels) and with random intensity changes (bias field, gamma, noise). Deterministic given --seed.
Default: the Colin27 template and the AAL atlas of Debian's mricron-data package
(apt-get install mricron-data), 12 subcortical structures (caudate, putamen, pallidum, thalamus,
hippocampus, amygdala; left and right apart). Test cases go to imagesTs/, their labels to labelsTs/.
"""


def register(subparsers: Any) -> None:
    """Add the ``atlas-dataset`` sub-command to ``subparsers`` (an argparse sub-parser action)."""
    from recokd.data.atlas import DEFAULT_ATLAS, DEFAULT_REGIONS, DEFAULT_TEMPLATE, Deformation

    d = Deformation()
    p = subparsers.add_parser(
        "atlas-dataset",
        help="write a dataset of real anatomy (template + atlas, deformed) in nnU-Net raw format",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(p, "Subcortical")
    p.add_argument("--spacing", type=float, default=2.0, metavar="MM",
                   help="isotropic voxel size of the cases in mm (default: 2)")
    p.add_argument("--margin", type=float, default=6.0, metavar="MM",
                   help="crop margin around the regions' bounding box in mm (default: 6)")
    p.add_argument("--template", default=str(DEFAULT_TEMPLATE), metavar="FILE",
                   help=f"the MRI template (default: {DEFAULT_TEMPLATE})")
    p.add_argument("--atlas", default=str(DEFAULT_ATLAS), metavar="FILE",
                   help=f"label atlas on the template's grid (default: {DEFAULT_ATLAS}); region names "
                   "are read from <atlas without .gz>.txt when present")
    p.add_argument("--regions", nargs="+", default=list(DEFAULT_REGIONS), metavar="REGION",
                   help="atlas regions, by name or value, that become classes 1..K (default: "
                   + " ".join(DEFAULT_REGIONS) + ")")
    p.add_argument("--elastic", type=float, default=d.elastic_mm, metavar="MM",
                   help=f"standard deviation of the elastic displacement in mm (default: {d.elastic_mm:g})")
    p.add_argument("--noise", type=float, default=d.noise, metavar="SD",
                   help=f"noise sd relative to the template's 99th percentile (default: {d.noise:g})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset described by ``args`` and print a summary; returns the exit code."""
    import dataclasses

    from recokd.data.atlas import Deformation, write_atlas_dataset

    folder = write_atlas_dataset(
        args.dataset_id,
        num_cases=args.cases,
        num_test_cases=args.test_cases,
        seed=args.seed,
        spacing=args.spacing,
        margin_mm=args.margin,
        template=args.template,
        atlas=args.atlas,
        regions=args.regions,
        name=args.name,
        raw_dir=args.raw,
        overwrite=args.overwrite,
        deformation=dataclasses.replace(Deformation(), elastic_mm=args.elastic, noise=args.noise),
        progress=True,
    )
    meta = json.loads((folder / "dataset.json").read_text())["reco_kd_atlas"]
    means = meta["mean_voxels_per_case"]
    shape = "x".join(str(s) for s in meta["shape_zyx"])
    test = f" + {args.test_cases} test (imagesTs, labelsTs)" if args.test_cases else ""
    print(f"wrote {args.cases} training{test} cases to {folder}")
    print(f"  shape (z, y, x) {shape} voxels, spacing {meta['spacing_mm']:g} mm, seed {args.seed}")
    print("  label  region            atlas value  mean voxels per training case")
    print(f"  {0:>5}  {'background':<16}  {'':>11}  {means['background']:>10.0f}")
    for region, info in meta["regions"].items():
        print(f"  {info['label']:>5}  {region:<16}  {info['atlas_value']:>11}  {means[region]:>10.1f}")
    smallest = min(meta["regions"], key=lambda r: means[r])
    print(f"  smallest: {smallest} ({means[smallest]:.0f} voxels per case)")
    print_next_steps(folder, args.dataset_id)
    return 0
