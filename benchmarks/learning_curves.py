"""Learning curves of nnU-Net training runs: held-out pseudo Dice per class against iterations and time.

nnU-Net logs, after every epoch, the "pseudo Dice" of each class on the fold's *validation* cases
(cases the run never trains on; ``num_val_iterations_per_epoch`` batches of patches). When the
patch covers the whole image (the 32^3 phantoms: patch 32^3), the patches are the whole cases, so
the pseudo Dice is the held-out Dice of those cases up to batch composition. This script reads
the training logs (``training_log_*.txt`` of a fold folder) and prints, per run, the curve every
``--every`` iterations and the first iteration at which the criteria of the regime are met.

    python benchmarks/learning_curves.py FOLD_FOLDER [FOLD_FOLDER ...] [--iters-per-epoch 50]
        [--every 250] [--labels liver,spleen,...] [--plot curves.png] [--csv curves.csv]

``--iters-per-epoch`` must be the run's (RECOKD_SHORT_ITERS / --iters-per-epoch). Wall time is
the sum of nnU-Net's epoch times (training + per-epoch validation, not the start-up or the final
validation).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

from recokd.report_paths import shown_path

_EPOCH = re.compile(r": Epoch (\d+)\s*$")
_DICE = re.compile(r": Pseudo dice \[(.*)\]\s*$")
_TIME = re.compile(r": Epoch time: ([0-9.]+) s")
_FLOAT = re.compile(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?|[-+]?\d+(?:[eE][-+]?\d+)?")


def read_curve(fold: Path) -> list[tuple[int, float, list[float]]]:
    """``[(epoch, epoch_seconds, dice_per_class), ...]`` from the newest training log of ``fold``
    (a training that was continued with ``--c`` writes a new log; all logs are read in order)."""
    logs = sorted(fold.glob("training_log_*.txt"))
    if not logs:
        raise SystemExit(f"{fold}: no training_log_*.txt (not an nnU-Net fold folder?)")
    rows: dict[int, tuple[float, list[float]]] = {}
    for log in logs:
        epoch, dice = None, None
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if m := _EPOCH.search(line):
                epoch, dice = int(m.group(1)), None
            elif (m := _DICE.search(line)) and epoch is not None:
                # "np.float32(0.51), ..." (numpy 2) or "0.51, ..." (numpy 1)
                dice = [float(x) for x in _FLOAT.findall(m.group(1).replace("np.float32", ""))]
            elif (m := _TIME.search(line)) and epoch is not None and dice is not None:
                rows[epoch] = (float(m.group(1)), dice)
    return [(e, t, d) for e, (t, d) in sorted(rows.items())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folds", nargs="+", type=Path, help="nnU-Net fold folders (.../fold_0)")
    ap.add_argument("--iters-per-epoch", type=int, default=50)
    ap.add_argument("--every", type=int, default=250, help="print a row every N iterations")
    ap.add_argument("--labels", default="liver,spleen,kidney_right,kidney_left,vessel,adrenal,lesion",
                    help="class names in label order (default: the phantoms')")
    ap.add_argument("--small", default="vessel,adrenal,lesion", help="classes of the 'small' column")
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG of the curves")
    ap.add_argument("--csv", type=Path, default=None, help="write every epoch as CSV")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.labels.split(",")]
    small = [names.index(n.strip()) for n in args.small.split(",") if n.strip() in names]
    curves = {}
    for fold in args.folds:
        curve = read_curve(fold)
        label = f"{fold.parent.name}/{fold.name}"
        root = fold.parent.parent.parent.name  # nnU-Net's results folder
        if root.startswith("nnUNet_results") and root != "nnUNet_results":  # a variant trained apart
            label = f"{root}/{label}"
        curves[label] = curve
        print(f"\n{label}  ({len(curve)} epochs x {args.iters_per_epoch} iterations)")
        print(f"{'iters':>6} {'min':>6} {'mean':>6} {'small':>6}  " + " ".join(f"{n[:8]:>8}" for n in names))
        elapsed, met = 0.0, None
        for epoch, seconds, dice in curve:
            elapsed += seconds
            iters = (epoch + 1) * args.iters_per_epoch
            mean = sum(dice) / len(dice)
            sm = sum(dice[i] for i in small) / len(small) if small else float("nan")
            if met is None and mean >= 0.85 and min(dice) >= 0.6:
                met = (iters, elapsed)
            if iters % args.every == 0 or epoch == curve[-1][0]:
                print(f"{iters:>6} {elapsed / 60:>6.1f} {mean:>6.3f} {sm:>6.3f}  "
                      + " ".join(f"{d:>8.3f}" for d in dice))
        if met:
            print(f"criteria (mean >= 0.85, every class >= 0.6) first met at {met[0]} iterations, "
                  f"{met[1] / 60:.1f} min")
        else:
            print("criteria (mean >= 0.85, every class >= 0.6) not met")
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run", "epoch", "iterations", "epoch_s", *names])
            for label, curve in curves.items():
                for epoch, seconds, dice in curve:
                    w.writerow([label, epoch, (epoch + 1) * args.iters_per_epoch, f"{seconds:.2f}",
                                *[f"{d:.4f}" for d in dice]])
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for label, curve in curves.items():
            x = [(e + 1) * args.iters_per_epoch for e, _, _ in curve]
            axes[0].plot(x, [sum(d) / len(d) for _, _, d in curve], label=label)
            axes[1].plot(x, [sum(d[i] for i in small) / len(small) for _, _, d in curve], label=label)
        for ax, title in zip(axes, ("mean Dice (held-out pseudo Dice)", "small structures"), strict=True):
            ax.set_xlabel("training iterations")
            ax.set_title(title)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {shown_path(args.plot, Path.cwd())}")  # from where it ran: no machine's path
    return 0


if __name__ == "__main__":
    sys.exit(main())
