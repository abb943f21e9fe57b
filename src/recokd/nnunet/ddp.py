"""Gradient synchronisation of parameters that live outside nnU-Net's DDP wrapper.

nnU-Net wraps only its network in ``DistributedDataParallel``. The KD method's trainable
parameters (adapters, context blocks) sit next to it, so DDP does not average their gradients;
:func:`all_reduce_mean_grads` does, once per step, after ``backward`` and before the optimiser
(and before a grad scaler's ``unscale_``, so that every rank sees the same inf/NaN and skips or
takes the same step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import distributed as dist


def all_reduce_mean_grads(params: Sequence[torch.nn.Parameter], group=None) -> None:
    """Average ``p.grad`` over the ranks of ``group`` for every parameter in ``params``.

    Every rank must pass the same parameters in the same order (they are built identically on
    every rank). One all-reduce of a single flattened buffer: the gradients, then one presence flag
    per parameter. A gradient that is ``None`` on a rank contributes zeros; a parameter whose
    gradient is ``None`` on *every* rank keeps ``None`` (as without DDP, where SGD skips it).
    The result is the mean over all ranks (``sum / world_size``), like DDP's own averaging.
    No-op when ``torch.distributed`` is not initialised or ``params`` is empty.
    """
    params = list(params)
    if not params or not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size(group)
    ref = params[0]
    flat_parts = [
        (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float32)
        for p in params
    ]
    flags = torch.tensor([float(p.grad is not None) for p in params], device=ref.device)
    flat = torch.cat([*flat_parts, flags])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    present = flat[-len(params):]
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if present[i] > 0:
            p.grad = (flat[offset:offset + n] / world).view_as(p).to(p.dtype)
        offset += n
