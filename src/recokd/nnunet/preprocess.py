"""nnU-Net's planning and preprocessing, run in this process for datasets the package generates (the
demo's and the bench's phantoms)."""

from __future__ import annotations

import os


def plan_and_preprocess(dataset_id: int, configuration: str) -> None:
    """``nnUNetv2_plan_and_preprocess -d ID -c CONFIGURATION -np 1 --verify_dataset_integrity`` in this
    process (nnU-Net's API: fingerprint, default planner, preprocessing with one worker each). The planner
    sets torch's threads from ``nnUNet_n_proc_DA`` and refuses 0, so that variable is 1 meanwhile; the
    caller's torch threads and ``nnUNet_n_proc_DA`` are restored afterwards."""
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    threads = torch.get_num_threads()
    da = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = "1"  # the planner sets torch threads from it; 0 is refused
    try:
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True)
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=(configuration,), num_processes=(1,))
    finally:
        os.environ["nnUNet_n_proc_DA"] = da if da is not None else "0"
        torch.set_num_threads(threads)
