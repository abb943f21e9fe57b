"""Full-volume CPU inference: teacher vs t=2 student on every backend (issues 4 and 13).

Setting: nnU-Net-like PlainConvUNets built directly (no dataset): teacher widths
[32, 64, 128, 256, 320], 5 stages, InstanceNorm + LeakyReLU, 4 classes; student t=2
([8, 16, 32, 64, 80]). One synthetic 1-channel volume (default 128^3, standard normal like z-scored
data) segmented with nnU-Net's own sliding window (``nnUNetPredictor.predict_sliding_window_return_logits``:
64^3 tiles at step 0.5 -> 27 tiles, Gaussian weighting, fp16 accumulation), mirroring TTA off by
default. Backends (:mod:`recokd.deploy.backends`): ``torch`` = the eager network (what nnU-Net's
predictor runs), ``torch-onednn`` = the same with recokd.deploy.cpu_conv's per-layer oneDNN choice
(what ``recokd predict`` runs on a CPU), ``onnxruntime`` = the network exported with
recokd.deploy.onnx_export on ONNX Runtime, ``openvino`` = converted with
recokd.deploy.openvino_backend (fp32 weights, float32 arithmetic, one static compiled shape per tile
size; ``--openvino-dynamic`` also times the dynamic-shape model), ``openvino-int8`` = the same after
NNCF post-training quantization. The weights are random, so int8 is calibrated on synthetic tiles:
this benchmark measures speed only; int8 *accuracy* is measured on a trained model with
``recokd quantize`` + ``recokd evaluate`` (benchmarks/RESULTS.md).

    python benchmarks/inference.py [--size 128] [--patch 64] [--threads 2] [--repeats 3]
                                   [--mirroring off|on|both] [--backends all] [--openvino-dynamic]

Times: wall clock per full volume, median of ``--repeats`` runs after a warm-up (one sliding-window
run on a patch-sized volume: same kernels, one tile; OpenVINO compiles its tile shape there), next
to the network alone on one tile (median of 5) and nnU-Net's sliding window with a zero network
(what the predictor itself costs). The process CPU time (all threads, spin-waits included) and the
1-minute load average are printed too: on a shared machine other processes inflate wall clock, so
read the ratios together with the load.
FLOPs: torch.utils.flop_counter (2 FLOPs per multiply-add) per patch, batch 1; achieved GFLOP/s =
FLOPs/patch x tiles x passes per tile / time, next to the machine's fp32 matmul rate (torch.mm of
two 2048^2 matrices on the same threads). Targets (issue 13): fp32 student >= 12x faster than the
fp32 teacher on the same, best backend; int8 student >= 25x faster than the stock nnU-Net teacher
(eager torch) and >= 1.5x faster than the fp32 student. Nothing here is asserted: it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks._nets

import torch  # noqa: E402

from benchmarks._nets import teacher_and_student  # noqa: E402
from recokd.deploy.backends import (  # noqa: E402
    BACKENDS,
    parse_backends,
    prepare_network,
    synthetic_calibration,
    unavailable_reason,
)
from recokd.evaluation.profile import count_flops, count_parameters, measure_matmul_gflops  # noqa: E402

NUM_CLASSES = 4
FP32 = ("torch", "torch-onednn", "onnxruntime", "openvino")


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


class ZeroNetwork(torch.nn.Module):
    """Returns zeros of the logits' shape: times nnU-Net's own sliding-window work (padding, tiling,
    Gaussian weighting, fp16 accumulation) with no network at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], NUM_CLASSES, *x.shape[2:])


def time_tile(network: torch.nn.Module, tile: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of the network alone on one tile (after one warm-up call)."""
    with torch.no_grad():
        network(tile)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            network(tile)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    ap.add_argument("--threads", type=int, default=2, help="torch threads and every runtime's threads")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-size", type=float, default=0.5)
    ap.add_argument("--mirroring", choices=("off", "on", "both"), default="off")
    ap.add_argument("--backends", default="all",
                    help=f"'all' or a comma-separated list of {', '.join(BACKENDS)}")
    ap.add_argument("--openvino-dynamic", action="store_true",
                    help="also time OpenVINO fp32 compiled once with dynamic shapes")
    ap.add_argument("--calibration-tiles", type=int, default=8, help="synthetic int8 calibration tiles")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher, student = teacher_and_student(t=2, num_classes=NUM_CLASSES)
    nets = {"teacher": teacher, "student": student}
    patch_shape = (1, 1, args.patch, args.patch, args.patch)
    volume = torch.randn(1, args.size, args.size, args.size, generator=torch.Generator().manual_seed(1))
    warmup_volume = torch.randn(1, args.patch, args.patch, args.patch)
    modes = ["off", "on"] if args.mirroring == "both" else [args.mirroring]
    backends = []
    for b in parse_backends(args.backends):
        reason = unavailable_reason(b)
        if reason:
            print(f"note: {reason}")
        else:
            backends.append(b)
            if b == "openvino" and args.openvino_dynamic:
                backends.append("openvino-dynamic")

    probe = make_predictor(student, args.patch, args.step_size, False)
    n_tiles = len(probe._internal_get_sliding_window_slicers(tuple(volume.shape[1:])))
    print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    matmul = measure_matmul_gflops(args.threads)
    print(f"CPU inference benchmark: volume {args.size}^3, patch {args.patch}^3, step {args.step_size} "
          f"({n_tiles} tiles), torch {torch.__version__}, {args.threads} threads (torch and every runtime), "
          f"median of {args.repeats} after a one-tile warm-up, mirroring {', '.join(modes)}; machine fp32 "
          f"matmul (torch.mm 2048^2): {matmul:.0f} GFLOP/s")

    info = {}
    for name, net in nets.items():
        net.eval().requires_grad_(False)
        net.decoder.deep_supervision = False
        info[name] = (count_parameters(net), count_flops(net, patch_shape))
        print(f"  {name:8s} widths {list(net.encoder.output_channels)}: {info[name][0] / 1e6:.2f} M params, "
              f"{info[name][1] / 1e9:.1f} GFLOPs/patch")

    floor = make_predictor(ZeroNetwork(), args.patch, args.step_size, False)
    floor_s = statistics.median(time_volume(floor, volume, warmup_volume, args.repeats)[0])
    print(f"  nnU-Net's sliding window with a zero network (no arithmetic): {floor_s:.2f} s per volume")

    results: dict[tuple[str, str, str], float] = {}
    calibration = synthetic_calibration(patch_shape, args.calibration_tiles)
    for name, net in nets.items():
        for backend in backends:
            t0 = time.perf_counter()
            if backend == "openvino-dynamic":
                from recokd.deploy.openvino_backend import OpenVINONetwork, convert_network

                network = OpenVINONetwork(convert_network(net, patch_shape), args.threads,
                                          static_shapes=False)
            else:
                network = prepare_network(backend, copy.deepcopy(net), patch_shape, args.threads, calibration)
            setup_s = time.perf_counter() - t0
            tile_s = time_tile(network, torch.randn(patch_shape))
            for mode in modes:
                predictor = make_predictor(network, args.patch, args.step_size, mode == "on")
                times, cpu = time_volume(predictor, volume, warmup_volume, args.repeats)
                median = statistics.median(times)
                results[(mode, name, backend)] = median
                passes = 8 if mode == "on" else 1
                rate = info[name][1] * n_tiles * passes / median / 1e9
                runs = ", ".join(f"{t:.2f}" for t in times)
                print(f"  mirroring {mode:3s} {name:8s} {backend:16s} median {median:8.2f} s (runs: {runs}; "
                      f"CPU s {statistics.median(cpu):.2f}; {rate:6.1f} GFLOP/s = {rate / matmul:5.1%} of "
                      "matmul; "
                      f"network alone {tile_s * 1e3:.0f} ms/tile; setup {setup_s:.0f} s; "
                      f"load {os.getloadavg()[0]:.2f})", flush=True)
            del network

    print()
    for mode in modes:
        r = {(n, b): results[(mode, n, b)] for n in nets for b in backends}
        print(f"mirroring {mode}: full-volume seconds, achieved GFLOP/s, student speed-up over the teacher "
              "on the same backend and over the stock teacher (eager torch)")
        for b in backends:
            gf = [info[n][1] * n_tiles * (8 if mode == "on" else 1) / r[(n, b)] / 1e9 for n in nets]
            stock = (f"  vs stock teacher {r[('teacher', 'torch')] / r[('student', b)]:6.2f}x"
                     if "torch" in backends else "")
            print(f"  {b:16s} teacher {r[('teacher', b)]:7.2f} s ({gf[0]:5.1f} GFLOP/s)  student "
                  f"{r[('student', b)]:6.2f} s ({gf[1]:5.1f} GFLOP/s)  same backend "
                  f"{r[('teacher', b)] / r[('student', b)]:5.2f}x{stock}")
        fp32 = [b for b in backends if b in FP32]
        if fp32:
            best = min(fp32, key=lambda b: r[("teacher", b)])
            ratio = r[("teacher", best)] / r[("student", best)]
            print(f"  fp32 student vs fp32 teacher on the teacher's best backend ({best}): {ratio:.2f}x "
                  f"[target >= 12x: {'met' if ratio >= 12 else 'missed'}]")
            best_student = min(fp32, key=lambda b: r[("student", b)])
            if "openvino-int8" in backends:
                int8 = r[("student", "openvino-int8")]
                if "torch" in backends:
                    vs_stock = r[("teacher", "torch")] / int8
                    print(f"  int8 student vs stock nnU-Net teacher (eager torch): {vs_stock:.2f}x "
                          f"[target >= 25x: {'met' if vs_stock >= 25 else 'missed'}]")
                vs_fp32 = r[("student", best_student)] / int8
                print(f"  int8 student vs fp32 student on its best backend ({best_student}): {vs_fp32:.2f}x "
                      f"[target >= 1.5x: {'met' if vs_fp32 >= 1.5 else 'missed'}]")
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"FLOPs ratio student/teacher per patch: 1/{info['teacher'][1] / info['student'][1]:.1f}; "
          f"parameters: 1/{info['teacher'][0] / info['student'][0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
