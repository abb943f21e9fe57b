"""Exponential moving average of the student's weights (docs/method.md section 5, optional)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from recokd.errors import KDError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class StudentEMA:
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every optimiser step.

    Holds a frozen deep copy (:attr:`module`) of the (unwrapped) student in eval mode. Floating
    point buffers (e.g. norm statistics) are averaged like parameters; integer buffers are copied.
    ``state_dict``/``load_state_dict`` make it resumable.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise KDError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(unwrap(model)).eval()
        self.module.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` into the average."""
        src = unwrap(model).state_dict()
        ema_floats, src_floats = [], []
        for name, value in self.module.state_dict().items():
            new = src[name].detach()
            if value.is_floating_point():
                ema_floats.append(value)
                src_floats.append(new.to(value.dtype))
            else:
                value.copy_(new)
        if ema_floats:
            torch._foreach_lerp_(ema_floats, src_floats, 1.0 - self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["weights"])

    def to(self, device: torch.device | str) -> StudentEMA:
        self.module.to(device)
        return self
