"""``recokd student-plans``: write the width-scaled student plans next to the teacher's plans."""

from __future__ import annotations

import argparse

#: printed after the summary; the KD command itself is documented by ``recokd --help``
NEXT_STEPS = (
    "Next: train the student on the teacher's preprocessed data (no re-preprocessing needed), e.g.\n"
    "  distilled:  recokd train {dataset} {configuration} 0 --teacher <teacher results folder> -t {t}\n"
    "  no-KD baseline:  nnUNetv2_train {dataset} {configuration} 0 -p {identifier}"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``student-plans`` sub-command."""
    p = subparsers.add_parser(
        "student-plans",
        help="create the width-scaled student plans from a teacher's nnU-Net plans",
        description=(
            "Copy an nnU-Net plans file with every stage width of one configuration scaled to "
            "max(C_min, C / 2**t) (depth, kernels, strides, patch size unchanged) and write it next to "
            "the teacher's plans in $nnUNet_preprocessed/DatasetXXX_Name/. The student reuses the "
            "teacher's preprocessed data."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset id or name (e.g. 4 or Dataset004_Hippocampus)")
    p.add_argument("-p", "--plans", default="nnUNetPlans",
                   help="teacher plans identifier (default: %(default)s)")
    p.add_argument("-c", "--configuration", default="3d_fullres",
                   help="configuration (default: %(default)s)")
    p.add_argument("-t", type=int, default=2,
                   help="width reduction exponent: widths / 2**t (default: %(default)s)")
    p.add_argument("--c-min", type=int, default=4,
                   help="minimum stage width C_min (default: %(default)s)")
    p.add_argument("--name", default=None,
                   help="student plans identifier (default: <plans>_recokd_t<t>[_cmin<c_min>])")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing student plans file with different content")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from recokd.nnunet.plans import make_student_plans

    sp = make_student_plans(
        args.dataset, args.plans, args.configuration, args.t, c_min=args.c_min,
        new_identifier=args.name, overwrite=args.overwrite,
    )
    status = "written" if sp.written else "unchanged, an identical file already existed"
    ratio = sp.param_ratio
    print(f"student plans:  {sp.identifier}")
    print(f"file:           {sp.path} ({status})")
    print(f"configuration:  {sp.configuration} ({sp.network_class}), t={sp.t}, c_min={sp.c_min}")
    if sp.scaled_configurations != [sp.configuration]:
        print(f"                shares its architecture with: {', '.join(sp.scaled_configurations)}"
              " (all scaled)")
    print(f"widths:         teacher {sp.teacher_widths}")
    print(f"                student {sp.student_widths}")
    if note := sp.saturation_note():
        print(f"                {note}")
    print(f"parameters:     teacher {sp.teacher_params:,}  student {sp.student_params:,}  "
          f"ratio {ratio:.4f} (1/{1 / ratio:.1f})")
    data_note = "" if sp.preprocessed_data.is_dir() else "  (missing: preprocess the teacher's plans first)"
    print(f"training data:  {sp.preprocessed_data} (the teacher's){data_note}")
    print(NEXT_STEPS.format(identifier=sp.identifier, dataset=sp.dataset_name, t=args.t,
                            configuration=sp.configuration))
    return 0
