"""The interface every KD method implements, so trainers can treat them alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class KDMethod(nn.Module):
    """Base class of a knowledge-distillation loss.

    Subclasses set the class attributes that tell a :class:`~recokd.kd.distiller.Distiller` what
    to compute, and implement :meth:`forward`:

    - ``uses_features``: needs intermediate features (student and teacher, one per tapped level).
    - ``uses_logits``: needs the full-resolution logits of both networks (the teacher's decoder
      then has to run, which costs the full teacher forward).
    - ``uses_target``: needs the ground-truth label map.

    ``forward`` returns a dict with ``"loss"`` (a scalar tensor carrying gradients; already
    weighted by the method's own coefficients, *not* by the KD schedule) and any number of
    detached python floats for logging, keyed ``"<component>/<level>"`` or ``"<component>"``.
    Trainable parameters (adapters, context blocks, regressors) are ordinary sub-modules, so
    ``method.parameters()`` is what a trainer adds to its optimizer.
    """

    uses_features: bool = True
    uses_logits: bool = False
    uses_target: bool = True

    def forward(  # noqa: D401 - interface
        self,
        student_feats: Sequence[torch.Tensor],
        teacher_feats: Sequence[torch.Tensor],
        target: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        student_logits: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError
