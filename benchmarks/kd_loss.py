"""Cost of the ReCo-KD loss (forward + backward) against the student's own training step and
against the straightforward reference implementation of the spec.

Setting (issue 2): CPU, B=2, 1x64^3 patch, teacher widths [32, 64, 128, 256, 320], student t=2,
every encoder stage but the bottleneck distilled (4 levels), 4 classes.

    python benchmarks/kd_loss.py [--repeats 5] [--threads 2] [--size 64] [--skip-reference]
                                 [--skip-compiled]

``reco_loss_compiled`` is the same loss with ``compile=True`` (torch.compile-d fused statistics;
the warm-up run includes the compilation, which is not timed).

Each variant runs in its own subprocess so that its peak memory (CPU: the increase of the
process's max RSS over its state after setup; CUDA: max_memory_allocated) is its own. Times are
the median of ``--repeats`` runs after one warm-up. Targets: loss <= 15% of the student step,
>= 5x faster than the reference.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.kd.reference, benchmarks._nets

import torch  # noqa: E402

from benchmarks._nets import teacher_and_student  # noqa: E402
from recokd.kd.partial import forward_features  # noqa: E402
from recokd.kd.reco import ReCoKD  # noqa: E402
from recokd.kd.taps import FeatureTaps, default_nnunet_taps  # noqa: E402

NUM_CLASSES = 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _setup(args, device):
    torch.manual_seed(0)
    teacher, student = teacher_and_student(t=2, num_classes=NUM_CLASSES)
    teacher, student = teacher.to(device).eval(), student.to(device)
    x = torch.randn(2, 1, args.size, args.size, args.size, device=device)
    # a label map with a large, a medium and a small structure, as in segmentation patches
    y = torch.zeros(2, 1, args.size, args.size, args.size, dtype=torch.long, device=device)
    s = args.size
    y[:, :, s // 8 : s // 2, s // 8 : s // 2, s // 8 : s // 2] = 1
    y[:, :, s // 2 : s // 2 + s // 6, s // 2 : s // 2 + s // 6, s // 2 : s // 2 + s // 6] = 2
    y[:, :, -6:-2, -6:-2, -6:-2] = 3
    taps = default_nnunet_taps(teacher)
    with torch.no_grad():
        t_feats = forward_features(teacher, x, taps)
    with FeatureTaps(student, taps) as tp:
        student(x)
        s_feats = [f.detach() for f in tp.features()]
    return teacher, student, x, y, taps, t_feats, s_feats


def _variant(name: str, args, queue) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    teacher, student, x, y, taps, t_feats, s_feats = _setup(args, device)
    kd = ReCoKD([f.shape[1] for f in s_feats], [f.shape[1] for f in t_feats], NUM_CLASSES,
                compile=name == "reco_loss_compiled").to(device)

    if name == "student_step":
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

        loss_fn = DeepSupervisionWrapper(
            DC_and_CE_loss(
                {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False},
                {},
                weight_ce=1,
                weight_dice=1,
            ),
            [1 / 2**i for i in range(4)],
        )
        opt = torch.optim.SGD(student.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
        targets = [
            torch.nn.functional.interpolate(y.float(), size=(args.size // 2**i,) * 3, mode="nearest")
            for i in range(4)
        ]

        def step():
            opt.zero_grad(set_to_none=True)
            out = student(x)
            loss_fn(out, targets).backward()
            opt.step()

    else:
        feats = [f.clone().requires_grad_(True) for f in s_feats]
        if name in ("reco_loss", "reco_loss_compiled"):

            def step():
                kd(feats, t_feats, y)["loss"].backward()

        else:  # straightforward reference of the spec
            from tests.kd.reference import ref_reco

            def step():
                total, _ = ref_reco(kd, feats, t_feats, y, num_classes=NUM_CLASSES)
                total.backward()

    step()  # warm-up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats if name != "reference" else max(1, args.repeats // 2)):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    queue.put((name, statistics.median(times), peak_mb))


def run(name: str, args) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_variant, args=(name, args, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise SystemExit(
            f"benchmark variant {name!r} failed (exit code {p.exitcode}); see its traceback above"
        )
    result = q.get(timeout=10)
    return result[1], result[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-compiled", action="store_true", help="skip the torch.compile variant")
    args = ap.parse_args(argv)
    names = ["student_step", "reco_loss"]
    names += [] if args.skip_compiled else ["reco_loss_compiled"]
    names += [] if args.skip_reference else ["reference"]
    res = {n: run(n, args) for n in names}
    print(
        f"ReCo-KD loss benchmark: device={args.device} threads={args.threads} B=2 patch={args.size}^3 "
        f"teacher widths [32,64,128,256,320], student t=2, 4 levels, fwd+bwd, median of {args.repeats}"
    )
    print(f"{'variant':<28}{'time [ms]':>12}{'peak mem [MiB]':>16}")
    labels = {
        "student_step": "student training step",
        "reco_loss": "ReCo-KD loss (ours)",
        "reco_loss_compiled": "ReCo-KD loss, compile=True",
        "reference": "straightforward reference",
    }
    for n in names:
        print(f"{labels[n]:<28}{res[n][0] * 1e3:>12.1f}{res[n][1]:>16.1f}")
    ratio = res["reco_loss"][0] / res["student_step"][0]
    print(f"loss / student step: {ratio:.3f}  (target <= 0.15)")
    if "reco_loss_compiled" in res:
        ratio_c = res["reco_loss_compiled"][0] / res["student_step"][0]
        print(f"compiled loss / student step: {ratio_c:.3f}  (after compilation; not counted above)")
    if "reference" in res:
        speedup = res["reference"][0] / res["reco_loss"][0]
        print(f"reference / loss:    {speedup:.1f}x (target >= 5x)")
        if "reco_loss_compiled" in res:
            print(f"reference / compiled loss: {res['reference'][0] / res['reco_loss_compiled'][0]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
