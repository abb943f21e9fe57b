"""``recokd evaluate`` (score a prediction folder) and ``recokd show`` (overlay PNG of one case)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from recokd.errors import UserError

_EVAL_DESCRIPTION = """\
Score the segmentations in PRED_DIR against those of the same file name in GT_DIR: per class Dice,
HD95 in mm and NSD (normalised surface Dice) at a tolerance in mm, with the spacing read from each
image header. Writes summary.json and per_case.csv to OUT_DIR (default PRED_DIR/recokd_eval).

Labels come from --labels, else --dataset-json, else a dataset.json in PRED_DIR (nnU-Net writes
one there) or in GT_DIR's parent (the raw dataset folder), else from the values in the files.

Empty masks: both empty -> Dice 1, HD95 0, NSD 1; exactly one empty -> Dice 0, NSD 0 and HD95 NaN
(left out of means and counted), or --hd95-empty-max MM. The convention is recorded in the files.

Ignore label: where the dataset.json has nnU-Net's 'ignore' label, the voxels the ground truth marks
with it count for no class (set to background in both masks), as in nnU-Net's own evaluation.
"""


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` and ``show`` sub-commands to ``subparsers``."""
    p = subparsers.add_parser(
        "evaluate", help="score predicted segmentations: Dice, HD95 (mm), NSD per class",
        description=_EVAL_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predicted segmentations")
    p.add_argument("gt_dir", metavar="GT_DIR", help="folder of ground-truth segmentations (same file names)")
    p.add_argument("-o", "--out", dest="out_dir", metavar="OUT_DIR", default=None,
                   help="where summary.json and per_case.csv go (default: PRED_DIR/recokd_eval)")
    p.add_argument("--dataset-json", metavar="FILE", default=None,
                   help="nnU-Net dataset.json: labels, file ending, phantom class sizes")
    p.add_argument("--labels", nargs="+", metavar="NAME=VALUE", default=None,
                   help="classes to score, e.g. liver=1 tumour=2 (a region: wt=1,2,3)")
    p.add_argument("--nsd-tol", nargs="+", metavar="MM|NAME=MM", default=None,
                   help="NSD tolerance in mm: one value for all classes and/or NAME=MM per class "
                        "(default: 1)")
    p.add_argument("--hd95-empty-max", type=float, metavar="MM", default=None,
                   help="HD95 when exactly one mask is empty (default: NaN, left out of means)")
    p.add_argument("--group", nargs="+", metavar="NAME=CLASS,CLASS", default=None,
                   help="class groups to summarise, e.g. small=vessel,adrenal (default: phantom sizes)")
    p.add_argument("--plot", action="store_true", help="also write dice_boxplot.png (per-class Dice)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files in OUT_DIR")
    p.set_defaults(func=run_evaluate)

    s = subparsers.add_parser(
        "show", help="PNG of one case: image, ground truth and prediction side by side",
        description="Write a PNG with one slice of IMAGE, GT over the image and PRED over the image. "
                    "The slice (first array axis, z) defaults to the one with most ground-truth foreground.",
    )
    s.add_argument("image", metavar="IMAGE", help="image file (channel 0 is shown), e.g. case_0000.nii.gz")
    s.add_argument("gt", metavar="GT", help="ground-truth segmentation")
    s.add_argument("pred", metavar="PRED", help="predicted segmentation")
    s.add_argument("-o", "--out", required=True, metavar="OUT.png", help="PNG to write")
    s.add_argument("--slice", type=int, default=None, metavar="Z", help="slice index along z")
    s.add_argument("--dataset-json", metavar="FILE", default=None, help="names the classes in the legend")
    s.add_argument("--window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="grey-value range, e.g. -160 240 for CT soft tissue (default: 0.5-99.5 percentile)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT.png if it exists")
    s.set_defaults(func=run_show)


def _split(item: str, flag: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name or not value:
        raise UserError(f"{flag}: expected NAME=VALUE, got {item!r}")
    return name, value


def parse_labels(items: list[str]) -> dict[str, int | list[int]]:
    """``["liver=1", "wt=1,2"]`` -> ``{"liver": 1, "wt": [1, 2]}``."""
    out: dict[str, int | list[int]] = {}
    for item in items:
        name, value = _split(item, "--labels")
        try:
            ints = [int(v) for v in value.split(",")]
        except ValueError:
            raise UserError(f"--labels: expected integer label values in {item!r}") from None
        out[name] = ints[0] if len(ints) == 1 else ints
    return out


def parse_tolerances(items: list[str]) -> float | dict[str, float]:
    """``["2"]`` -> 2.0; ``["1", "vessel=0.5"]`` -> ``{"default": 1.0, "vessel": 0.5}``."""
    out: dict[str, float] = {}
    for item in items:
        name, value = ("default", item) if "=" not in item else _split(item, "--nsd-tol")
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"--nsd-tol: expected MM or NAME=MM (mm as a number), got {item!r}") from None
    return out["default"] if list(out) == ["default"] else out


def parse_groups(items: list[str]) -> dict[str, list[str]]:
    """``["small=vessel,adrenal"]`` -> ``{"small": ["vessel", "adrenal"]}``."""
    return {name: [c for c in value.split(",") if c] for name, value in (_split(i, "--group") for i in items)}


def _ms(stats: dict[str, Any], fmt: str) -> str:
    if stats["mean"] is None:
        return "n/a"
    sd = "" if stats["sd"] is None else f"±{stats['sd']:{fmt}}"
    return f"{stats['mean']:{fmt}}{sd}"


def format_table(summary: dict[str, Any]) -> str:
    """The per-class table ``recokd evaluate`` prints (Dice, HD95 and NSD as mean±sd)."""
    rows = [("class", "label", "Dice", "HD95 mm (NaN)", "NSD (tol mm)")]
    for name, c in summary["per_class"].items():
        label = "+".join(map(str, c["label"])) if isinstance(c["label"], list) else str(c["label"])
        hd = _ms(c["hd95_mm"], ".2f") + (f" ({c['hd95_mm']['nan']})" if c["hd95_mm"]["nan"] else "")
        nsd = f"{_ms(c['nsd'], '.3f')} ({c['nsd']['tolerance_mm']:g})"
        rows.append((name, label, _ms(c["dice"], ".3f"), hd, nsd))

    def means(title: str, m: dict[str, Any]) -> tuple[str, ...]:
        f = lambda v, fmt: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{fmt}}"  # noqa: E731
        return (title, "", f(m["dice"], ".3f"), f(m["hd95_mm"], ".2f"), f(m["nsd"], ".3f"))

    extra = [means("foreground mean", summary["foreground_mean"])]
    extra += [means(f"{g} ({len(m['classes'])} classes)", m) for g, m in summary["groups"].items()]
    widths = [max(len(r[i]) for r in rows + extra) for i in range(5)]

    def line(r: tuple[str, ...]) -> str:
        cells = zip(r, widths, strict=True)
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(cells))

    out = [line(rows[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[1:]]
    out += ["  ".join("-" * w for w in widths)] + [line(r) for r in extra]
    return "\n".join(out)


def run_evaluate(args: argparse.Namespace) -> int:
    """Score, write the result files (and the box plot with ``--plot``), print the table."""
    from recokd.evaluation.evaluate import BOXPLOT_NAME, check_writable, evaluate_folders

    out_dir = Path(args.out_dir) if args.out_dir else Path(args.pred_dir) / "recokd_eval"
    if args.plot:
        check_writable([out_dir / BOXPLOT_NAME], args.overwrite)
    result = evaluate_folders(
        args.pred_dir, args.gt_dir,
        labels=parse_labels(args.labels) if args.labels else None,
        dataset_json=args.dataset_json,
        nsd_tolerance_mm=parse_tolerances(args.nsd_tol) if args.nsd_tol else 1.0,
        hd95_one_empty_mm=args.hd95_empty_max,
        class_groups=parse_groups(args.group) if args.group else None,
        out_dir=out_dir, overwrite=args.overwrite, progress=True,
    )
    summary = result.summary()
    print(f"{summary['num_cases']} cases, labels from {summary['labels_source']}")
    print(format_table(summary))
    hd_max = result.convention.hd95_one_empty_mm
    one_hd = "NaN, left out of means and counted" if hd_max is None else f"{hd_max:g} mm (stated maximum)"
    print(f"empty masks: {result.convention.name} (both empty: Dice 1, HD95 0, NSD 1; "
          f"one empty: Dice 0, NSD 0, HD95 {one_hd})")
    for note in summary["warnings"][:10]:
        print(f"warning: {note}")
    if len(summary["warnings"]) > 10:
        print(f"warning: ... {len(summary['warnings']) - 10} more in summary.json")
    written = [out_dir / "summary.json", out_dir / "per_case.csv"]
    if args.plot:
        from recokd.evaluation.plots import dice_boxplot

        written.append(dice_boxplot(result, out_dir / BOXPLOT_NAME, overwrite=args.overwrite))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Write the overlay PNG of one case."""
    from recokd.evaluation.plots import show_case

    out = show_case(args.image, args.gt, args.pred, args.out, slice_index=args.slice,
                    dataset_json=args.dataset_json, window=args.window, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
