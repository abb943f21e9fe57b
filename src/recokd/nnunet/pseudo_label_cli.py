"""``recokd pseudo-label``: a trained nnU-Net model's segmentations of unlabelled scans as a new nnU-Net raw
dataset (:mod:`recokd.nnunet.pseudo_label`), that stock nnU-Net plans, preprocesses and trains on."""

from __future__ import annotations

import argparse

from recokd.nnunet.devices import add_device_argument
from recokd.nnunet.layout import CHECKPOINT_FINAL

_DESCRIPTION = """\
Predict every scan of -i (raw images in nnU-Net naming, CASE_0000.nii.gz ...) with nnU-Net's predictor
and the model in MODEL_FOLDER (an nnU-Net results folder .../DatasetXXX_Name/Trainer__Plans__Configuration;
several folds are ensembled as nnUNetv2_predict does), and write the scans and their segmentations as the
nnU-Net raw dataset -o (imagesTr, labelsTr, dataset.json with the model's channels, labels and file ending).
With --labelled, the cases of a labelled raw dataset join it with their real labels. Then train a student
on it with stock nnU-Net: nnUNetv2_plan_and_preprocess -d XXX, nnUNetv2_train XXX 3d_fullres 0.

Everything is checked before anything is written. The dataset is built in a hidden folder next to -o and
moved into place when complete; run the same command again to continue an interrupted run.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pseudo-label`` sub-command."""
    p = subparsers.add_parser(
        "pseudo-label",
        help="write a model's segmentations of unlabelled scans as a new nnU-Net raw dataset",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_FOLDER",
                   help="nnU-Net results folder .../DatasetXXX_Name/Trainer__Plans__Configuration")
    p.add_argument("-i", dest="scans", required=True, metavar="SCANS",
                   help="folder of raw scans in nnU-Net naming (CASE_0000.nii.gz ...)")
    p.add_argument("-o", dest="dataset", required=True, metavar="DATASET",
                   help="the new dataset: DatasetXXX_Name (in $nnUNet_raw) or a path ending in one")
    p.add_argument("-f", dest="folds", nargs="+", default=None, metavar="FOLD",
                   help="folds to ensemble, as nnUNetv2_predict's -f ('all' is fold_all; default: every "
                        "fold_X with the checkpoint)")
    p.add_argument("--labelled", default=None, metavar="DATASET",
                   help="also copy the labelled cases (real labels) of this nnU-Net raw dataset (folder, id "
                        "or name in $nnUNet_raw); its labels and file ending must be the model's")
    p.add_argument("-chk", "--checkpoint", dest="checkpoint", default=CHECKPOINT_FINAL,
                   help="checkpoint file name in each fold (default: %(default)s)")
    add_device_argument(p)
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--step-size", type=float, default=0.5, help="sliding window step size (default: 0.5)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dataset folder -o if it exists (it is replaced only once the new one "
                        "is complete)")
    p.set_defaults(func=_pseudo_label)


def _pseudo_label(args: argparse.Namespace) -> int:
    from recokd.nnunet.devices import torch_device
    from recokd.nnunet.pseudo_label import plan_pseudo_labels, write_pseudo_label_dataset

    device = torch_device(args.device)
    plan = plan_pseudo_labels(args.model, args.scans, args.dataset, folds=args.folds,
                              checkpoint=args.checkpoint, labelled=args.labelled, overwrite=args.overwrite,
                              tile_step_size=args.step_size, mirroring=not args.disable_tta)
    folder = write_pseudo_label_dataset(plan, device)
    folds = ", ".join(map(str, plan.model.folds))
    print(f"wrote {folder}: {len(plan.scans)} pseudo-labelled scan(s) (folds {folds} of {plan.model.folder}) "
          f"and {len(plan.labelled)} labelled case(s)")
    dataset_id = folder.name[len("Dataset"):len("Dataset") + 3]
    print(f"train a student on it: nnUNetv2_plan_and_preprocess -d {int(dataset_id)} && "
          f"nnUNetv2_train {int(dataset_id)} {plan.model.configuration} 0")
    return 0
