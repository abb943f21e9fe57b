"""Full-volume CPU inference: teacher vs t=2 student, eager PyTorch vs ONNX Runtime (issue 4).

Setting: nnU-Net-like PlainConvUNets built directly (no dataset): teacher widths
[32, 64, 128, 256, 320], 5 stages, InstanceNorm + LeakyReLU, 4 classes; student t=2
([8, 16, 32, 64, 80]). One synthetic 1-channel volume (default 128^3, standard normal like z-scored
data) segmented with nnU-Net's own sliding window (``nnUNetPredictor.predict_sliding_window_return_logits``:
64^3 tiles at step 0.5 -> 27 tiles, Gaussian weighting, fp16 accumulation), mirroring TTA off by
default. Backends: ``torch`` = the eager network (what nnU-Net's predictor runs), ``torch-onednn`` =
the same with recokd.deploy.cpu_conv's per-layer oneDNN choice (what ``recokd predict`` runs on a
CPU), ``onnxruntime``
= the same network exported with recokd.deploy.onnx_export and run by recokd's ONNX network
stand-in inside the same predictor (CPUExecutionProvider, all graph optimisations). Optional
``torch-cl``: eager with ``channels_last_3d`` weights (lets oneDNN take every 3D convolution).

    python benchmarks/inference.py [--size 128] [--patch 64] [--threads 2] [--repeats 3]
                                   [--mirroring off|on|both] [--channels-last] [--exporter auto]

Times: wall clock per full volume, median of ``--repeats`` runs after a warm-up (one sliding-window
run on a patch-sized volume: same kernels, one tile). The process CPU time (all threads, spin-waits
included) and the 1-minute load average are printed too: on a shared machine other processes
inflate wall clock, so read the wall-clock ratios together with the load. FLOPs:
torch.utils.flop_counter (2 FLOPs per multiply-add) per patch, batch 1. Targets: student >= 8x
faster than the teacher on CPU; ONNX Runtime >= 1.3x faster than eager PyTorch for the student.
Nothing here is asserted: it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks._nets

import torch  # noqa: E402

from benchmarks._nets import teacher_and_student  # noqa: E402
from recokd.deploy.cpu_conv import use_fastest_cpu_conv3d  # noqa: E402
from recokd.deploy.onnx_export import compare_with_onnxruntime, create_session, export_network  # noqa: E402
from recokd.deploy.onnx_predictor import OnnxNetwork  # noqa: E402
from recokd.evaluation.profile import count_flops, count_parameters  # noqa: E402

NUM_CLASSES = 4


def make_predictor(network: torch.nn.Module, patch: int, step_size: float, mirroring: bool):
    """nnU-Net's predictor around ``network`` (CPU) with just what its sliding window reads."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):  # its "only supported for cuda devices" notice
        predictor = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    verbose=False, allow_tqdm=False)
    predictor.network = network
    predictor.configuration_manager = SimpleNamespace(patch_size=[patch] * 3)
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=NUM_CLASSES)
    predictor.allowed_mirroring_axes = (0, 1, 2)
    return predictor


def time_volume(predictor, volume: torch.Tensor, warmup_volume: torch.Tensor,
                repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds (all threads) of each run after the warm-up."""
    predictor.predict_sliding_window_return_logits(warmup_volume)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        predictor.predict_sliding_window_return_logits(volume)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128, help="volume edge (voxels)")
    ap.add_argument("--patch", type=int, default=64, help="patch edge (voxels, divisible by 16)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and ONNX Runtime intra-op threads")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-size", type=float, default=0.5)
    ap.add_argument("--mirroring", choices=("off", "on", "both"), default="off")
    ap.add_argument("--channels-last", action="store_true",
                    help="also time eager torch with channels_last_3d")
    ap.add_argument("--exporter", default="auto", choices=("auto", "dynamo", "torchscript"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher, student = teacher_and_student(t=2, num_classes=NUM_CLASSES)
    nets = {"teacher": teacher, "student": student}
    patch_shape = (1, 1, args.patch, args.patch, args.patch)
    volume = torch.randn(1, args.size, args.size, args.size, generator=torch.Generator().manual_seed(1))
    warmup_volume = torch.randn(1, args.patch, args.patch, args.patch)
    modes = ["off", "on"] if args.mirroring == "both" else [args.mirroring]
    backends = ["torch"] + (["torch-cl"] if args.channels_last else []) + ["torch-onednn", "onnxruntime"]

    probe = make_predictor(student, args.patch, args.step_size, False)
    n_tiles = len(probe._internal_get_sliding_window_slicers(tuple(volume.shape[1:])))
    print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"CPU inference benchmark: volume {args.size}^3, patch {args.patch}^3, step {args.step_size} "
          f"({n_tiles} tiles), torch {torch.__version__}, {args.threads} threads (torch and ONNX Runtime), "
          f"median of {args.repeats} after a one-tile warm-up, mirroring {', '.join(modes)}")

    sessions, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, net in nets.items():
            net.eval().requires_grad_(False)
            net.decoder.deep_supervision = False
            params, flops = count_parameters(net), count_flops(net, patch_shape)
            file = Path(tmp) / f"{name}.onnx"
            t0 = time.perf_counter()
            exporter = export_network(net, torch.randn(patch_shape), file, exporter=args.exporter)
            export_s = time.perf_counter() - t0
            sessions[name] = create_session(file, args.threads)
            diff, scale = compare_with_onnxruntime(net, sessions[name], torch.randn(patch_shape))
            info[name] = (params, flops)
            print(f"  {name:8s} widths {list(net.encoder.output_channels)}: {params / 1e6:.2f} M params, "
                  f"{flops / 1e9:.1f} GFLOPs/patch; ONNX ({exporter}, {export_s:.0f} s) max |diff| "
                  f"{diff:.2g} (max |logit| {scale:.2g})")

        results: dict[tuple[str, str, str], float] = {}
        for mode in modes:
            for name, net in nets.items():
                for backend in backends:
                    if backend == "onnxruntime":
                        network = OnnxNetwork(sessions[name])
                    elif backend == "torch-cl":
                        network = net.to(memory_format=torch.channels_last_3d)
                    elif backend == "torch-onednn":  # what recokd predict / recokd profile run on a CPU
                        network = copy.deepcopy(net.to(memory_format=torch.contiguous_format))
                        use_fastest_cpu_conv3d(network, torch.randn(patch_shape))
                    else:
                        network = net.to(memory_format=torch.contiguous_format)
                    predictor = make_predictor(network, args.patch, args.step_size, mode == "on")
                    times, cpu = time_volume(predictor, volume, warmup_volume, args.repeats)
                    results[(mode, name, backend)] = statistics.median(times)
                    runs = ", ".join(f"{t:.2f}" for t in times)
                    print(f"  mirroring {mode:3s} {name:8s} {backend:12s} median "
                          f"{statistics.median(times):8.2f} s (runs: {runs}; CPU s median "
                          f"{statistics.median(cpu):.2f}; load {os.getloadavg()[0]:.2f})", flush=True)

    print()
    for mode in modes:
        r = {(n, b): results[(mode, n, b)] for n in nets for b in backends}
        print(f"mirroring {mode}: full-volume seconds (speed-up of the student over the teacher)")
        for b in backends:
            print(f"  {b:12s} teacher {r[('teacher', b)]:8.2f} s  student {r[('student', b)]:7.2f} s  "
                  f"student speed-up {r[('teacher', b)] / r[('student', b)]:5.2f}x")
        st_fast = r[("teacher", "torch")] / r[("student", "torch-onednn")]
        print(f"  student (torch, per-layer oneDNN: recokd predict) vs teacher (eager torch, nnU-Net "
              f"default): "
              f"{st_fast:.2f}x [target >= 8x: {'met' if st_fast >= 8 else 'missed'}]")
        st_ort = r[("teacher", "torch")] / r[("student", "onnxruntime")]
        ort_gain = r[("student", "torch")] / r[("student", "onnxruntime")]
        print(f"  student (ONNX Runtime) vs teacher (eager torch, nnU-Net default): {st_ort:.2f}x "
              f"[target >= 8x: {'met' if st_ort >= 8 else 'missed'}]")
        print(f"  ONNX Runtime vs eager torch, student: {ort_gain:.2f}x "
              f"[target >= 1.3x: {'met' if ort_gain >= 1.3 else 'missed'}]; teacher: "
              f"{r[('teacher', 'torch')] / r[('teacher', 'onnxruntime')]:.2f}x")
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"FLOPs ratio student/teacher per patch: 1/{info['teacher'][1] / info['student'][1]:.1f}; "
          f"parameters: 1/{info['teacher'][0] / info['student'][0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
