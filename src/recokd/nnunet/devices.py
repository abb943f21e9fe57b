"""Devices and threads as nnU-Net's entry points handle them (``-device``; torch threads), shared by
``recokd train`` and ``recokd predict``."""

from __future__ import annotations

import argparse
import os

from recokd.errors import UserError
from recokd.nnunet.layout import CPU_THREADS_ENV


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """``--device/-device {cuda,cpu,mps}`` (default cuda), as nnU-Net's ``-device``."""
    p.add_argument("--device", "-device", choices=("cuda", "cpu", "mps"), default="cuda",
                   help="device, as nnU-Net's -device (default: %(default)s; pick the GPU with "
                        "CUDA_VISIBLE_DEVICES)")


def torch_device(name: str, num_gpus: int = 1):
    """``torch.device(name)``, checked to be available (and ``num_gpus`` CUDA devices for DDP)."""
    import torch

    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: CUDA is not available on this machine; use --device cpu (or mps)")
        if num_gpus > torch.cuda.device_count():
            raise UserError(f"--num-gpus {num_gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif num_gpus > 1:
        raise UserError(f"--num-gpus {num_gpus} needs --device cuda (nnU-Net's DDP is CUDA only)")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("--device mps: MPS is not available on this machine")
    return torch.device(name)


def cpu_threads() -> int:
    """Torch's threads on a CPU: ``RECOKD_CPU_THREADS`` when set (``bench --jobs N`` sets it to each run's
    share of the cores), else every core, as nnU-Net's entry points."""
    import multiprocessing

    given = os.environ.get(CPU_THREADS_ENV, "").strip()
    if not given:
        return multiprocessing.cpu_count()
    if not given.isdigit() or int(given) < 1:
        raise UserError(f"environment variable {CPU_THREADS_ENV}: expected a positive integer, got {given!r}")
    return int(given)


def set_nnunet_threads(device) -> None:
    """Torch threads as nnU-Net's entry points set them (on a CPU: :func:`cpu_threads`)."""
    import torch

    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    elif device.type == "cuda":
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # can only be set once per process
            pass
