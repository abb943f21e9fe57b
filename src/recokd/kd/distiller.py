"""The Distiller: a frozen teacher, a student, feature taps and a KD method in one module.

It also carries what distillation beyond the labels needs (docs/method.md section 8): a teacher made of
several networks (nnU-Net's folds: their logits are averaged, as nnU-Net's predictor ensembles folds),
and a per-sample ``labelled`` mask: on an unlabelled sample, the label map a KD method reads (MS-SARD's
class masks, the class regions of CIRKD/SKD) is the teacher's own prediction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from recokd.errors import KDError
from recokd.kd.base import KDMethod
from recokd.kd.ema import unwrap
from recokd.kd.masks import resize_target
from recokd.kd.partial import forward_features
from recokd.kd.taps import FeatureTaps


def _first_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution logits of a network output (nnU-Net deep supervision: a list, highest first)."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


def teacher_label_map(logits: torch.Tensor, like: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """The teacher's segmentation in the format of the target ``like`` (docs/method.md section 8).

    ``logits``: ``B x K x D x H x W``. Label datasets: ``argmax_k`` as ``B x 1 x ...``; region datasets
    (sigmoid outputs): ``logits > 0`` per region channel, plus an all-zero last channel where ``like``
    has one more channel (nnU-Net appends the ignore mask there). Resized to ``like``'s spatial shape by
    nearest neighbour (:func:`recokd.kd.masks.resize_target`), in ``like``'s dtype.
    """
    if regions:
        pred = (logits > 0).to(like.dtype)
        extra = like.shape[1] - pred.shape[1]
        if extra < 0 or extra > 1:
            raise KDError(f"region target has {like.shape[1]} channels, teacher logits {pred.shape[1]}: "
                          "expected as many, or one more (the ignore channel)")
        if extra:
            pred = torch.cat([pred, torch.zeros_like(pred[:, :1])], 1)
    else:
        if like.shape[1] != 1:
            raise KDError(f"label target of shape {tuple(like.shape)}: expected one channel (B x 1 x ...)")
        pred = logits.argmax(1, keepdim=True).to(like.dtype)
    return resize_target(pred, like.shape[2:])


def fill_unlabelled(
    target: torch.Tensor | Sequence[torch.Tensor],
    teacher_logits: torch.Tensor,
    labelled: torch.Tensor,
    regions: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """``target`` with the samples where ``labelled`` is False replaced by the teacher's prediction.

    ``target``: a ``B x 1|R x ...`` map or nnU-Net's deep-supervision list of them; ``labelled``: ``B``
    booleans. Every map of a list gets the teacher's map at its own resolution
    (:func:`teacher_label_map`). Labelled samples are returned unchanged (bit for bit).
    """
    labelled = labelled.to(device=teacher_logits.device, dtype=torch.bool)

    def fill(t: torch.Tensor) -> torch.Tensor:
        if t.shape[0] != labelled.shape[0]:
            raise KDError(f"target has {t.shape[0]} samples, the labelled mask {labelled.shape[0]}")
        keep = labelled.view(-1, *([1] * (t.dim() - 1)))
        return torch.where(keep, t, teacher_label_map(teacher_logits, t, regions))

    if isinstance(target, torch.Tensor):
        return fill(target)
    return [fill(t) for t in target]


class Distiller(nn.Module):
    """Runs student and teacher on the same batch and computes a KD loss.

    Args:
        teacher: frozen on construction (``eval()``, ``requires_grad_(False)``); always run under
            ``torch.no_grad()`` and kept in eval mode by :meth:`train`. Its features are the ones
            distilled.
        student: the network being trained; may be wrapped (DDP, ``torch.compile``): taps are
            resolved on the unwrapped module, the forward goes through the wrapper.
        kd_method: a :class:`~recokd.kd.base.KDMethod`.
        student_taps / teacher_taps: dotted module paths of the distilled levels (same order;
            ``teacher_taps`` defaults to ``student_taps``).
        ensemble: further teacher networks (the other folds of an nnU-Net model), frozen like
            ``teacher``. The teacher's logits are then the mean of all members' logits, ``z̄ = 1/F
            sum_f z_f`` -- what nnU-Net's predictor computes for several folds before its softmax
            -- for soft targets and for the label maps of unlabelled samples; features come from
            ``teacher`` alone.
        regions: the networks predict region channels (sigmoid), not classes (softmax); decides how
            the teacher's label map of an unlabelled sample is made (:func:`teacher_label_map`).

    ``forward(x, target, labelled)`` returns ``(student_output, kd)`` where ``kd`` is the method's dict
    (``kd["loss"]`` a tensor). The teacher runs only as far as its taps need (encoder only for
    nnU-Net nets), unless its logits are needed: the method reads logits (``uses_logits``), or it
    reads the target and some samples are unlabelled; then it runs in full.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        kd_method: KDMethod,
        student_taps: Sequence[str],
        teacher_taps: Sequence[str] | None = None,
        *,
        ensemble: Sequence[nn.Module] = (),
        regions: bool = False,
    ):
        super().__init__()
        teacher_taps = list(student_taps if teacher_taps is None else teacher_taps)
        if len(teacher_taps) != len(student_taps):
            raise KDError(
                f"{len(student_taps)} student taps but {len(teacher_taps)} teacher taps: one per level each"
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.ensemble = nn.ModuleList([m.eval().requires_grad_(False) for m in ensemble])
        self.student = student
        self.kd_method = kd_method
        self.student_taps = list(student_taps)
        self.teacher_taps = teacher_taps
        self.regions = bool(regions)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        self.ensemble.eval()
        return self

    def kd_parameters(self) -> Iterator[nn.Parameter]:
        """The KD method's trainable parameters (adapters, context blocks), for the optimiser."""
        return (p for p in self.kd_method.parameters() if p.requires_grad)

    def teacher_outputs(
        self, x: torch.Tensor, need_logits: bool | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Teacher features at its taps, and its full-resolution logits (the ensemble's mean ``z̄`` when
        there are further members) if ``need_logits`` (default: if the method reads logits)."""
        if need_logits is None:
            need_logits = self.kd_method.uses_logits
        with torch.no_grad():
            if need_logits:
                with FeatureTaps(self.teacher, self.teacher_taps) as taps:
                    logits = _first_output(self.teacher(x))
                    feats = taps.features() if self.kd_method.uses_features else []
                if len(self.ensemble):
                    for member in self.ensemble:
                        logits = logits + _first_output(member(x))
                    logits = logits / (len(self.ensemble) + 1)
                return feats, logits
            if not self.kd_method.uses_features:
                return [], None
            return forward_features(self.teacher, x, self.teacher_taps), None

    def forward(
        self,
        x: torch.Tensor,
        target: torch.Tensor | Sequence[torch.Tensor] | None = None,
        labelled: torch.Tensor | None = None,
        return_target: bool = False,
    ) -> tuple[torch.Tensor | list[torch.Tensor], dict[str, torch.Tensor | float]]:
        """``labelled``: ``B`` booleans, ``None`` for all labelled. Where False, the method's target is the
        teacher's prediction (:func:`fill_unlabelled`); the caller keeps the label loss off those samples,
        or, with ``return_target``, takes that filled target from ``kd["target"]`` for its label loss
        (hard pseudo-labels made online by the teacher, docs/method.md section 8)."""
        unlabelled = labelled is not None and target is not None and not bool(labelled.all())
        teacher_targets = unlabelled and (self.kd_method.uses_target or return_target)
        teacher_feats, teacher_logits = self.teacher_outputs(
            x, need_logits=self.kd_method.uses_logits or teacher_targets
        )
        if teacher_targets:
            target = fill_unlabelled(target, teacher_logits, labelled, self.regions)
        with FeatureTaps(
            unwrap(self.student), self.student_taps if self.kd_method.uses_features else []
        ) as taps:
            output = self.student(x)
            student_feats = taps.features()
        kd = self.kd_method(
            student_feats,
            teacher_feats,
            target,
            student_logits=_first_output(output) if self.kd_method.uses_logits else None,
            teacher_logits=teacher_logits if self.kd_method.uses_logits else None,
        )
        if return_target:
            kd = {**kd, "target": target}
        return output, kd
