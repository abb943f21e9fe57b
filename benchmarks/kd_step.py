"""Cost of one ReCo-KD distillation training step against the student's plain nnU-Net step.

Setting: B=2, 1 x 64^3 patch, teacher widths [32, 64, 128, 256, 320] (5 stages, nnU-Net strides
1,2,2,2,2), student t=2 ([8, 16, 32, 64, 80]), 4 classes, deep supervision, CPU by default.
Every variant is a whole optimiser step as ``nnUNetTrainerReCoKD.train_step`` does it
(zero_grad, forward, nnU-Net's deep-supervised Dice+CE, backward, grad clipping to 12, SGD
Nesterov step; autocast + GradScaler on CUDA, as nnU-Net); the networks are built with
dynamic_network_architectures and He-initialised as nnU-Net does, no dataset needed:

- ``plain``: the student's plain nnU-Net training step (nnUNetTrainer.train_step);
- ``kd``: the distillation step: student forward/backward with feature taps, the frozen teacher's
  *encoder-only* forward (recokd.kd.distiller.Distiller), the ReCo-KD loss, SGD over the student
  and the KD parameters;
- ``kd_full_teacher``: the same but the teacher runs its FULL forward (encoder + decoder), i.e.
  what a naive implementation that calls ``teacher(x)`` pays.

Variants are interleaved (one step of each per round) after ``--warmup`` rounds, so a busy
machine slows them alike; reported is the median of ``--repeats`` rounds and the ratios to
``plain`` (target: kd <= 1.8 x plain).

    python benchmarks/kd_step.py [--repeats 7] [--warmup 2] [--size 64] [--threads N] [--device cpu]
                                 [--compiled]

``--folds F`` adds the soft-target steps of distillation beyond the labels (docs/method.md section 8):
``soft_f1``, ReCo-KD + logit KD (``reco+logits``, the teacher runs in full), and ``soft_fF``, the same
with a teacher of ``F`` folds (``F - 1`` more networks in the ensemble, their logits averaged); the cost
of each added fold is printed.

``--compiled`` adds ``kd_compiled``: the ``kd`` step with ``ReCoKD(compile=True)`` (torch.compile-d
fused statistics; compiled during the warm-up rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks._nets

import numpy as np  # noqa: E402
import torch  # noqa: E402
from dynamic_network_architectures.initialization.weight_init import InitWeights_He  # noqa: E402
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss  # noqa: E402
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper  # noqa: E402
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss  # noqa: E402

from benchmarks._nets import STRIDES, TEACHER_WIDTHS, plain_unet  # noqa: E402
from recokd.kd.distiller import Distiller  # noqa: E402
from recokd.kd.partial import tap_channels  # noqa: E402
from recokd.kd.registry import build_kd_method  # noqa: E402
from recokd.kd.taps import FeatureTaps, default_nnunet_taps  # noqa: E402
from recokd.kd.widths import scale_widths  # noqa: E402

GRAD_CLIP = 12.0


def nnunet_seg_loss(num_outputs: int) -> torch.nn.Module:
    """nnUNetTrainer._build_loss (no regions, no ignore label, no DDP, no compile)."""
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None,
                          dice_class=MemoryEfficientSoftDiceLoss)
    weights = np.array([1 / (2**i) for i in range(num_outputs)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def make_batch(size: int, num_classes: int, device: torch.device, batch: int = 2):
    """An image and a blobby label map (a large, a medium and a small structure per class) with
    nnU-Net's deep-supervision targets (nearest downsampling by the cumulative strides)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, size, generator=g)
    c = max(2, size // 8)
    coarse = torch.randn(batch, num_classes, c, c, c, generator=g)
    y = torch.nn.functional.interpolate(coarse, size=(size,) * 3, mode="trilinear").argmax(1, keepdim=True)
    targets, factor = [], 1
    for stride in STRIDES[1:]:
        factor *= stride[0]
        targets.append(y[..., ::factor // stride[0], ::factor // stride[0], ::factor // stride[0]])
    return x.to(device), [t.float().to(device) for t in targets]


def build(size: int, t: int, num_classes: int, device: torch.device, compile: bool = False):
    torch.manual_seed(0)
    teacher = plain_unet(TEACHER_WIDTHS, num_classes)
    student = plain_unet(scale_widths(TEACHER_WIDTHS, t), num_classes)
    for net in (teacher, student):
        net.apply(InitWeights_He(1e-2))
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = student.to(device).train()
    taps = default_nnunet_taps(student)
    shape = (1, 1, size, size, size)
    channels = tap_channels(student, taps, shape), tap_channels(teacher, taps, shape)
    kd_method = build_kd_method("reco", *channels, num_classes, compile=compile).to(device)
    return teacher, student, kd_method, taps


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)


def make_steps(size: int, t: int, num_classes: int, device: torch.device,
               compiled: bool = False, folds: int = 0) -> dict[str, Callable[[], float]]:
    teacher, student, kd_method, taps = build(size, t, num_classes, device)
    kd_compiled_method = build_kd_method("reco", kd_method.student_channels, kd_method.teacher_channels,
                                         num_classes, compile=True).to(device) if compiled else None
    x, target = make_batch(size, num_classes, device)
    seg_loss = nnunet_seg_loss(len(target))
    opt_plain = sgd(student.parameters())
    opt_kd = sgd([*student.parameters(), *kd_method.parameters()])
    lam = 0.01
    # nnU-Net's AMP pattern: autocast + GradScaler on CUDA only
    cuda = device.type == "cuda"
    scaler = torch.GradScaler("cuda") if cuda else None

    def autocast():
        return torch.autocast("cuda") if cuda else contextlib.nullcontext()

    def finish(loss: torch.Tensor, opt: torch.optim.Optimizer, extra=()) -> float:
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), GRAD_CLIP)
        if extra:
            torch.nn.utils.clip_grad_norm_(extra, GRAD_CLIP)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return float(loss.detach())

    def plain() -> float:
        opt_plain.zero_grad(set_to_none=True)
        with autocast():
            loss = seg_loss(student(x), target)
        return finish(loss, opt_plain)

    def distillation_step(method, opt: torch.optim.Optimizer, ensemble=()) -> Callable[[], float]:
        """One ``nnUNetTrainerReCoKD.train_step`` with ``method`` (encoder-only teacher unless the method
        reads logits; ``ensemble``: the teacher's further folds)."""
        dist = Distiller(teacher, student, method, taps, ensemble=ensemble)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            with autocast():
                out, kd_out = dist(x, target)
                loss = seg_loss(out, target) + lam * kd_out["loss"]
            return finish(loss, opt, list(method.parameters()))

        return step

    kd = distillation_step(kd_method, opt_kd)

    def kd_full_teacher() -> float:
        opt_kd.zero_grad(set_to_none=True)
        with autocast():
            with torch.no_grad(), FeatureTaps(teacher, taps) as tt:
                teacher(x)  # encoder AND decoder
                t_feats = tt.features()
            with FeatureTaps(student, taps) as st:
                out = student(x)
                s_feats = st.features()
            kd_out = kd_method(s_feats, t_feats, target)
            loss = seg_loss(out, target) + lam * kd_out["loss"]
        return finish(loss, opt_kd, list(kd_method.parameters()))

    steps = {"plain": plain, "kd": kd, "kd_full_teacher": kd_full_teacher}
    if folds:
        soft = build_kd_method("reco+logits", kd_method.student_channels, kd_method.teacher_channels,
                               num_classes).to(device)
        opt_soft = sgd([*student.parameters(), *soft.parameters()])
        members = []
        for f in range(1, folds):
            torch.manual_seed(f)
            member = plain_unet(TEACHER_WIDTHS, num_classes)
            member.apply(InitWeights_He(1e-2))
            members.append(member.to(device).eval().requires_grad_(False))
        steps["soft_f1"] = distillation_step(soft, opt_soft)
        if folds > 1:
            steps[f"soft_f{folds}"] = distillation_step(soft, opt_soft, members)
    if kd_compiled_method is not None:
        opt_c = sgd([*student.parameters(), *kd_compiled_method.parameters()])
        steps["kd_compiled"] = distillation_step(kd_compiled_method, opt_c)
    return steps


def timed(fn: Callable[[], float], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--size", type=int, default=64, help="patch edge length (default 64)")
    p.add_argument("-t", type=int, default=2, help="student width exponent (default 2)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--folds", type=int, default=0,
                   help="add the soft-target steps (reco+logits) with a teacher of 1 and of this many folds")
    p.add_argument("--compiled", action="store_true",
                   help="add kd_compiled: the KD step with ReCoKD(compile=True) (compiled during warm-up)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = make_steps(args.size, args.t, args.classes, device, compiled=args.compiled, folds=args.folds)
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, fn in steps.items():
            times[name].append(timed(fn, device))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"device {device}, threads {torch.get_num_threads()}, B=2, 1x{args.size}^3, "
          f"teacher {TEACHER_WIDTHS}, student t={args.t} {scale_widths(TEACHER_WIDTHS, args.t)}, "
          f"{args.classes} classes; "
          f"median of {args.repeats} (after {args.warmup} warm-up rounds, variants interleaved)")
    for name, value in med.items():
        spread = f"[{min(times[name]):.3f} .. {max(times[name]):.3f}]"
        print(f"  {name:16s} {value * 1000:9.1f} ms  {spread:>20s}  x{value / med['plain']:.2f} of plain")
    ratio = med["kd"] / med["plain"]
    print(f"KD step / plain student step = {ratio:.2f} (target <= 1.8: "
          f"{'met' if ratio <= 1.8 else 'NOT met'}); the encoder-only teacher saves "
          f"{1 - med['kd'] / med['kd_full_teacher']:.0%} of the full-teacher KD step")
    if args.folds > 1:
        all_folds, one_fold = med[f"soft_f{args.folds}"], med["soft_f1"]
        per_fold = (all_folds - one_fold) / (args.folds - 1)
        print(f"fold ensemble: each added fold costs {per_fold * 1000:.1f} ms per step = "
              f"{per_fold / med['plain']:.2f} x the plain student step ({args.folds} folds: "
              f"x{all_folds / med['plain']:.2f}, one fold: x{one_fold / med['plain']:.2f})")
    if "kd_compiled" in med:
        print(f"compiled KD step / plain student step = {med['kd_compiled'] / med['plain']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
