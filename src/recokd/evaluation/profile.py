"""Efficiency profile of trained nnU-Net models (teacher vs ReCo-KD students): parameters, FLOPs,
peak memory and full-volume sliding-window latency, measured as /work/shared/spec/evaluation.md asks.

Conventions (also written into every JSON/CSV/table this module produces):

- **Parameters**: ``sum(p.numel() for p in network.parameters())`` of the network as nnU-Net builds
  it for the checkpoint (all segmentation heads included).
- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of the inference
  network (deep supervision off) at the configuration's patch size, batch 1. Unit: FLOPs, 2 per
  multiply-add (thop/fvcore count MACs, half as many). The counter counts convolutions, transposed
  convolutions and matrix products; normalisation, non-linearities, biases and additions are not
  counted (they are < 1% of a 3D U-Net's arithmetic).
- **Latency**: wall clock of nnU-Net's ``nnUNetPredictor.predict_sliding_window_return_logits`` on
  one full preprocessed-space volume (padding, tiling with ``tile_step_size``, Gaussian weighting,
  fp16 accumulation, mirroring if on), after ``warmup`` runs, median of ``repeats`` runs; with and
  without mirroring test-time augmentation (3D: 8 network passes per tile with it, 1 without; 2d: 4).
  **Backends** (:mod:`recokd.deploy.backends`): who runs the network inside that sliding window.
  By default on the CPU ``torch-onednn`` (:mod:`recokd.deploy.cpu_conv`'s per-layer choice of
  oneDNN for 3D convolutions, what ``recokd predict`` runs); ``torch`` is stock nnU-Net (whose
  batch-1 heuristic puts narrow layers on a slow im2col kernel); ``onnxruntime``, ``openvino`` and
  ``openvino-int8`` run the exported network. A backend whose package is missing is skipped with a
  one-line note. int8 is calibrated on the model's preprocessed training cases
  (:func:`recokd.deploy.quantize.calibration_set`) where ``$nnUNet_preprocessed`` has them, else on
  synthetic tiles (timing only; the row says which). Each backend's network runs one untimed
  patch-sized tile first, so one-off set-up (OpenVINO's compilation of the tile shape, ONNX
  Runtime's first-run allocations) is not in the latency.
- **Achieved GFLOP/s**: FLOPs per patch x tiles x network passes per tile / median latency, next to
  the machine's measured fp32 matmul rate (``torch.mm`` of two 2048^2 float32 matrices on the same
  threads, median of 5): how much of the hardware the sliding window uses.
  The volume is either synthetic (standard normal, i.e. like z-scored data, of ``volume_shape``; by
  default twice the first model's patch size per axis; a 2d configuration's patch slides over every
  slice of a 3D volume, by default 8 slices of twice its patch) or a real case preprocessed by the model's
  own nnU-Net preprocessor; then reading, preprocessing (with ``resampling``: the plans' own or
  nnU-Net's torch resampling) and nnU-Net's export of that case are timed too, each on its own
  (:mod:`recokd.evaluation.stages`): the per-stage split ``recokd predict`` spends. Torch threads are set to
  ``threads`` (note: ``nnUNetv2_predict``/``recokd predict`` cap torch threads at
  ``nnUNet_def_n_proc``, 8 by default; this profile does not).
- **Peak memory**: CPU: the process's resident-set high-water mark during the runs of a mode minus
  the resident set before the backend's network was built (after the checkpoint and the volume
  were loaded): what the backend holds (its copy of the weights, a runtime's compiled model and
  buffers) plus what the runs allocate; transient set-up peaks before the runs are not in it. The
  high-water mark is reset through ``/proc/self/clear_refs`` (Linux >= 4.0) before each mode;
  where that is not possible the ``ru_maxrss`` increase is reported instead (a lower bound) and
  the method field says so. Each model and backend is measured in a fresh process (``isolate=True``)
  so that one's freed memory (kept by the allocator) or loaded libraries do not hide or inflate the
  next one's; a runtime's own libraries, loaded when its model is built, are part of its peak. CUDA:
  ``max_memory_allocated`` minus ``memory_allocated`` before the runs (tensors only, not the
  caching allocator's reserve).
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recokd.errors import UserError
from recokd.nnunet.layout import CHECKPOINT_FINAL, parse_model_folder_name

if TYPE_CHECKING:
    import torch
    from torch import nn

    from recokd.evaluation.stages import StageTiming

FLOPS_UNIT = "FLOPs (2 per multiply-add)"
FLOPS_COUNTER = "torch.utils.flop_counter.FlopCounterMode (conv, transposed conv, matmul; batch 1, one patch)"
MIRROR_MODES = ("off", "on")
#: slices of the default synthetic volume of a 2d configuration (its in-plane size: twice the patch)
DEFAULT_2D_SLICES = 8


@dataclass(frozen=True)
class ModelSpec:
    """A model to profile: ``path`` as :func:`recokd.nnunet.trained_model.load_trained_model` takes it."""

    path: str
    label: str = ""

    @staticmethod
    def parse(text: str) -> ModelSpec:
        """``PATH`` or ``LABEL=PATH`` (the label is used in tables and by ``--eval-json``)."""
        label, sep, path = text.partition("=")
        if sep and label and "/" not in label and not Path(text).exists():
            return ModelSpec(path=path, label=label)
        return ModelSpec(path=text, label=default_label(text))


def default_label(path: str | Path) -> str:
    """The results folder name ``Trainer__Plans__Configuration`` (from a folder, a ``fold_X``
    folder or a checkpoint inside one), else the file/folder name."""
    p = Path(path)
    parts = [p] + list(p.parents)[:2]
    for part in parts:
        if parse_model_folder_name(part.name) is not None:
            return part.name
    return p.stem if p.suffix == ".pth" else p.name


@dataclass
class ProfileSettings:
    device: str = "cpu"
    threads: int | None = None  #: torch threads (None: torch's default)
    repeats: int = 3
    warmup: int = 1
    step_size: float = 0.5
    mirroring: tuple[str, ...] = MIRROR_MODES  #: subset of ("off", "on")
    volume_shape: tuple[int, ...] | None = None  #: synthetic volume (preprocessed space)
    case_files: tuple[str, ...] | None = None  #: one file per input channel, preprocessed per model
    fold: int | str = 0
    checkpoint: str = CHECKPOINT_FINAL
    isolate: bool = True  #: each model in its own process (clean peak memory)
    seed: int = 0
    #: backends to time (recokd.deploy.backends.BACKENDS); None: torch-onednn on the CPU, torch on CUDA
    backends: tuple[str, ...] | None = None
    #: openvino-int8: preprocessed training cases to calibrate on (4 tiles each)
    calibration_cases: int = 8
    #: with case_files: the image and class-map resampling (recokd.nnunet.resampling: nnunet or torch)
    resampling: str = "nnunet"

    def resolved_backends(self) -> tuple[str, ...]:
        if self.backends is not None:
            return tuple(self.backends)
        return ("torch-onednn",) if self.device == "cpu" else ("torch",)

    def validate(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise UserError(f"device must be cpu or cuda, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be a positive integer, got {self.threads}")
        if self.repeats < 1 or self.warmup < 0:
            raise UserError(f"repeats must be >= 1 and warm-up runs >= 0, got {self.repeats} and "
                            f"{self.warmup}")
        if not 0 < self.step_size <= 1:
            raise UserError(f"step size must be in (0, 1], got {self.step_size}")
        if not self.mirroring or any(m not in MIRROR_MODES for m in self.mirroring):
            raise UserError(f"mirroring modes must be a non-empty subset of {MIRROR_MODES}, got "
                            f"{self.mirroring}")
        if self.volume_shape is not None and self.case_files is not None:
            raise UserError("give either a volume shape or a case, not both")
        from recokd.nnunet.resampling import RESAMPLING_CHOICES

        if self.resampling not in RESAMPLING_CHOICES:
            raise UserError(f"resampling must be one of {', '.join(RESAMPLING_CHOICES)}, "
                            f"got {self.resampling!r}")
        if self.resampling != "nnunet" and self.case_files is None:
            raise UserError("--resampling applies to a real scan's stages: give --case")
        shape = self.volume_shape
        if shape is not None and (len(shape) not in (2, 3) or min(shape) < 1):
            raise UserError(f"volume shape must be 2 or 3 positive sizes, got {self.volume_shape}")
        for f in self.case_files or ():
            if not Path(f).is_file():
                raise UserError(f"case file {f} does not exist")
        from recokd.deploy.backends import BACKENDS, CPU_ONLY

        backends = self.resolved_backends()
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown or not backends:
            raise UserError(f"backends must be a non-empty subset of {', '.join(BACKENDS)}, got {backends}")
        if self.device != "cpu" and any(b in CPU_ONLY for b in backends):
            cpu_only = ", ".join(b for b in backends if b in CPU_ONLY)
            raise UserError(f"backends {cpu_only} run on the CPU only; "
                            f"with --device {self.device} use --backends torch")
        if self.calibration_cases < 1:
            raise UserError(f"calibration cases must be positive, got {self.calibration_cases}")


@dataclass
class ModeTiming:
    mirroring: bool
    passes_per_tile: int
    times_s: list[float]
    median_s: float
    peak_memory_bytes: int


@dataclass
class ModelProfile:
    label: str
    path: str
    checkpoint: str
    trainer: str
    plans: str
    configuration: str
    network_class: str
    widths: list[int] | None
    patch_size: list[int]
    num_input_channels: int
    num_classes: int
    parameters: int
    flops_per_patch: int
    volume_shape: list[int]  #: preprocessed-space shape fed to the sliding window (channels excluded)
    volume_source: str  #: "synthetic" or the case file(s)
    n_tiles: int
    mirror_axes: list[int] | None
    device: str
    device_name: str
    threads: int
    memory_method: str
    timings: dict[str, ModeTiming] = field(default_factory=dict)  #: "off"/"on" -> timing
    #: with --case: read/preprocess/export of that case (recokd.evaluation.stages), seconds and peak memory
    stages: dict[str, StageTiming] = field(default_factory=dict)
    resampling: str = "nnunet"
    backend: str = "torch"  #: recokd.deploy.backends name
    calibration: str | None = None  #: openvino-int8: what the quantization was calibrated on

    def gflops_per_s(self, mode: str) -> float | None:
        """Achieved GFLOP/s of mirroring ``mode``: FLOPs/patch x tiles x passes / median seconds."""
        t = self.timings.get(mode)
        if t is None or t.median_s <= 0:
            return None
        return self.flops_per_patch * self.n_tiles * t.passes_per_tile / t.median_s / 1e9


@dataclass
class ProfileReport:
    settings: ProfileSettings
    models: list[ModelProfile]  #: one row per (model, backend), models in order, backends in order
    environment: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)  #: backend -> one-line reason
    matmul_gflops: float | None = None  #: measured fp32 torch.mm rate on the profile's threads

    def ratios(self, model: ModelProfile) -> dict[str, float | None]:
        """Ratios against the first row: params/FLOPs as this/first, speed-ups as first/this; and
        ``speedup_same_backend_*`` against the first model's row on this row's backend."""
        ref = self.models[0]
        same = next((m for m in self.models if m.label == ref.label and m.backend == model.backend), None)
        out: dict[str, float | None] = {
            "parameters_ratio": model.parameters / ref.parameters if ref.parameters else None,
            "flops_ratio": model.flops_per_patch / ref.flops_per_patch if ref.flops_per_patch else None,
        }
        for mode in MIRROR_MODES:
            b = model.timings.get(mode)
            keys = ((f"speedup_mirroring_{mode}", ref), (f"speedup_same_backend_mirroring_{mode}", same))
            for key, base in keys:
                a = base.timings.get(mode) if base else None
                out[key] = a.median_s / b.median_s if a and b and b.median_s > 0 else None
        return out


# ---------------------------------------------------------------------------- measurements


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def count_flops(network: nn.Module, input_shape: tuple[int, ...], device: str | torch.device = "cpu") -> int:
    """FLOPs (2 per multiply-add) of one forward pass on a zero input of ``input_shape``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(x)
    return int(counter.get_total_flops())


def measure_matmul_gflops(threads: int | None = None, n: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of ``torch.mm`` of two ``n x n`` matrices on ``threads`` torch threads (median of
    ``repeats`` after a warm-up; 2 n^3 FLOPs each): the machine's practical dense peak."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / statistics.median(times) / 1e9


class PeakMemory:
    """Peak memory of a block, relative to a baseline taken by :meth:`set_baseline` (see module doc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self.method = ""

    @staticmethod
    def _status_kib(key: str) -> int | None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
        except OSError:
            return None
        return int(m.group(1)) if m else None

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _release_freed_memory() -> None:
        """Give memory that was freed during setup back to the OS (glibc ``malloc_trim``), so that
        the measured window cannot reuse it unseen."""
        import ctypes
        import ctypes.util

        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass

    def set_baseline(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cpu":
            self._release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated - memory_allocated before"
        elif self._reset_hwm() and self._status_kib("VmRSS") is not None:
            self.baseline = self._status_kib("VmRSS") * 1024
            self.method = "cpu RSS high-water mark (VmHWM after clear_refs) - RSS before"
        else:
            self.baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "cpu ru_maxrss increase (lower bound: high-water mark could not be reset)"

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.method.startswith("cpu RSS"):
            self._reset_hwm()

    def peak(self) -> int:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.baseline)
        if self.method.startswith("cpu RSS"):
            return max(0, (self._status_kib("VmHWM") or 0) * 1024 - self.baseline)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.baseline)


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _widths(model) -> list[int] | None:
    kwargs = model.loaded.configuration_manager.network_arch_init_kwargs
    widths = kwargs.get("features_per_stage") if isinstance(kwargs, dict) else None
    if isinstance(widths, int):
        return [widths] * int(kwargs.get("n_stages", 1))
    return list(widths) if isinstance(widths, (list, tuple)) else None


@dataclass
class Volume:
    """The sliding window's input and where it came from; a case's read/preprocess timings and the
    properties its export needs."""

    data: torch.Tensor  #: (C, *spatial) float32 in preprocessed space
    source: str
    properties: dict | None = None
    stages: dict[str, StageTiming] = field(default_factory=dict)
    #: the configuration the case was preprocessed with; its export resamples back with the same
    configuration_manager: Any = None


def _load_volume(model, settings: ProfileSettings, device: torch.device, memory: PeakMemory) -> Volume:
    """The input of the sliding window: ``--case`` read and preprocessed by nnU-Net (both timed,
    :mod:`recokd.evaluation.stages`, with ``settings.resampling``), else a synthetic volume."""
    import torch

    from recokd.evaluation.stages import measure, preprocess_case, read_case

    loaded = model.loaded
    if settings.case_files:
        if len(settings.case_files) != loaded.num_input_channels:
            raise UserError(f"--case: {len(settings.case_files)} file(s) given, the model takes "
                            f"{loaded.num_input_channels} input channel(s) (one file per channel, in order)")
        files = ", ".join(settings.case_files)
        try:
            (image, properties), read = measure(memory, read_case, loaded.plans_manager,
                                                settings.case_files)
        except Exception as e:
            raise UserError(f"--case {files}: nnU-Net's reader failed ({type(e).__name__}: {e})") from e
        manager = _resampling_manager(loaded, settings)
        try:
            (data, properties), pre = measure(memory, preprocess_case, image, properties,
                                              loaded.plans_manager, manager, loaded.dataset_json)
        except UserError as e:
            raise UserError(f"--case {files}: {e}") from e
        return Volume(data, "case: " + files, properties, {"read": read, "preprocess": pre}, manager)
    shape = volume_shape_for(model.patch_size, settings.volume_shape)
    generator = torch.Generator().manual_seed(settings.seed)
    data = torch.randn(loaded.num_input_channels, *shape, generator=generator)
    return Volume(data, "synthetic (standard normal)")


def _resampling_manager(loaded, settings: ProfileSettings):
    """The model's configuration manager with ``settings.resampling`` (recokd.nnunet.resampling)."""
    import torch

    from recokd.nnunet.resampling import with_torch_resampling

    if settings.resampling == "torch":
        return with_torch_resampling(loaded.configuration_manager, torch.get_num_threads())
    return loaded.configuration_manager


def time_export(model, predictor, volume: Volume, memory: PeakMemory) -> StageTiming:
    """nnU-Net's export of ``volume``'s case (resampling back, argmax, writing to a temporary file),
    on the logits of one untimed sliding window without mirroring."""
    import tempfile

    from recokd.evaluation.stages import export_case, measure

    loaded = model.loaded
    predictor.use_mirroring = False
    logits = predictor.predict_sliding_window_return_logits(volume.data).cpu()
    with tempfile.TemporaryDirectory(prefix="recokd_profile_") as tmp:
        target = Path(tmp) / f"case{loaded.dataset_json['file_ending']}"
        _, timing = measure(memory, export_case, logits, loaded.plans_manager, volume.configuration_manager,
                            loaded.dataset_json, volume.properties, target)
    return timing


def volume_shape_for(patch_size: list[int], volume_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The 3D preprocessed-space volume ``(z, y, x)`` a model with ``patch_size`` is timed on.

    nnU-Net's predictor always takes a volume: a 3D patch slides over it, a 2d configuration's
    patch ``(y, x)`` slides over every slice. Default: twice the patch per axis; for a 2d patch
    :data:`DEFAULT_2D_SLICES` slices of twice the patch. A 2-axis ``volume_shape`` given for a 2d
    model is one slice."""
    if volume_shape is None:
        shape = tuple(2 * p for p in patch_size)
        return (DEFAULT_2D_SLICES, *shape) if len(patch_size) == 2 else shape
    shape = tuple(volume_shape)
    if len(patch_size) == 2 and len(shape) == 2:
        return (1, *shape)
    if len(shape) != 3:
        raise UserError(f"volume shape {shape} has {len(shape)} axes; the model's patch {patch_size} needs a "
                        "3D volume (z y x)")
    return shape


def make_predictor(model, settings: ProfileSettings, device: torch.device, network: nn.Module | None = None):
    """nnU-Net's ``nnUNetPredictor`` set up with ``network`` (default: the loaded network; else a
    backend's stand-in, :func:`recokd.deploy.backends.prepare_network`), no file I/O."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    loaded = model.loaded
    with contextlib.redirect_stdout(io.StringIO()):  # its CPU notice about perform_everything_on_device
        predictor = nnUNetPredictor(tile_step_size=settings.step_size, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    # attribute assignment instead of manual_initialization: no torch.compile behind our back
    predictor.plans_manager = loaded.plans_manager
    predictor.configuration_manager = loaded.configuration_manager
    network = loaded.network if network is None else network
    predictor.list_of_parameters = [network.state_dict()]
    predictor.network = network
    predictor.dataset_json = loaded.dataset_json
    predictor.trainer_name = loaded.trainer_name
    predictor.allowed_mirroring_axes = model.mirror_axes
    predictor.label_manager = loaded.label_manager
    return predictor


def n_tiles(predictor, volume_shape: tuple[int, ...]) -> int:
    """Tiles of the sliding window over ``volume_shape`` (a 2d patch: per slice, every slice)."""
    patch = tuple(predictor.configuration_manager.patch_size)
    k = len(patch)  # pad_nd_image pads the last len(patch) axes of smaller volumes up to the patch
    volume_shape = (*volume_shape[:-k], *(max(s, p) for s, p in zip(volume_shape[-k:], patch, strict=True)))
    return len(predictor._internal_get_sliding_window_slicers(tuple(volume_shape)))


def time_sliding_window(predictor, data: torch.Tensor, *, mirroring: bool, repeats: int, warmup: int,
                        memory: PeakMemory) -> ModeTiming:
    """Warm-up runs, then ``repeats`` timed runs of the full-volume sliding window."""
    predictor.use_mirroring = mirroring
    device = predictor.device
    memory.start()
    for _ in range(warmup):
        predictor.predict_sliding_window_return_logits(data)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = predictor.predict_sliding_window_return_logits(data)
        _sync(device)
        times.append(time.perf_counter() - t0)
        del out
    axes = predictor.allowed_mirroring_axes
    passes = 2 ** len(axes) if mirroring and axes else 1
    return ModeTiming(mirroring=mirroring, passes_per_tile=passes, times_s=times,
                      median_s=statistics.median(times), peak_memory_bytes=memory.peak())


def _int8_calibration(model, settings: ProfileSettings) -> tuple[list, str]:
    """Calibration tiles for openvino-int8 and where they came from (see the module doc)."""
    from recokd.deploy.backends import synthetic_calibration
    from recokd.deploy.quantize import calibration_set

    try:
        cal = calibration_set(model, settings.calibration_cases, seed=settings.seed)
    except UserError as e:
        reason = str(e).split(";")[0]
        return synthetic_calibration(model.patch_input_shape), f"synthetic standard-normal tiles ({reason})"
    return cal.tiles, f"{len(cal.tiles)} tiles of {len(cal.cases)} preprocessed training cases"


def profile_model_backends(spec: ModelSpec,
                           settings: ProfileSettings) -> tuple[list[ModelProfile], dict[str, str]]:
    """Profile one model on every backend of ``settings`` in this process: one :class:`ModelProfile`
    per backend that can run, and ``{backend: reason}`` for those skipped (missing package)."""
    import copy
    import gc

    import torch

    from recokd.deploy.backends import prepare_network, unavailable_reason
    from recokd.deploy.model import load_inference_model

    settings.validate()
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine; use --device cpu")
    device = torch.device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    model = load_inference_model(spec.path, fold=settings.fold, checkpoint=settings.checkpoint,
                                 device=str(device))
    loaded = model.loaded
    pristine = copy.deepcopy(loaded.network)  # every backend starts from the unmodified network
    volume = _load_volume(model, settings, device, PeakMemory(device))
    data, source = volume.data, volume.source
    profiles, skipped = [], {}
    for backend in settings.resolved_backends():
        reason = unavailable_reason(backend)
        if reason:
            skipped[backend] = reason
            continue
        calibration, calibration_note = None, None
        if backend == "openvino-int8":
            calibration, calibration_note = _int8_calibration(model, settings)
        memory = PeakMemory(device)
        memory.set_baseline()  # before the backend's model exists: its weights and buffers count
        network = prepare_network(backend, copy.deepcopy(pristine), model.patch_input_shape, settings.threads,
                                  calibration) if device.type == "cpu" else loaded.network
        with torch.no_grad():  # one untimed tile first: compilation and first-run set-up are not timed
            network(torch.zeros(model.patch_input_shape, device=device))
        predictor = make_predictor(model, settings, device, network)
        timings = {}
        for mode in settings.mirroring:
            timings[mode] = time_sliding_window(predictor, data, mirroring=mode == "on",
                                                repeats=settings.repeats, warmup=settings.warmup,
                                                memory=memory)
        if volume.properties is not None and "export" not in volume.stages:  # once per model: any backend
            volume.stages["export"] = time_export(model, predictor, volume, memory)
        profiles.append(_model_profile(spec, model, data, source, predictor, device, memory, timings, backend,
                                       calibration_note))
        del network, predictor
        gc.collect()
    if profiles:
        # counted after the timings: the counting forward pass would otherwise pre-fault memory that
        # the allocator then reuses inside the measured window
        parameters = count_parameters(pristine)
        flops = count_flops(pristine, model.patch_input_shape, device)
        profiles = [replace(p, parameters=parameters, flops_per_patch=flops, stages=dict(volume.stages),
                            resampling=settings.resampling) for p in profiles]
    return profiles, skipped


def _model_profile(spec, model, data, source, predictor, device, memory, timings, backend,
                   calibration) -> ModelProfile:
    import torch

    loaded = model.loaded
    return ModelProfile(
        label=spec.label or default_label(spec.path), path=str(spec.path),
        checkpoint=str(loaded.checkpoint_path), trainer=loaded.trainer_name,
        plans=loaded.plans_manager.plans_name, configuration=loaded.configuration_name,
        network_class=loaded.configuration_manager.network_arch_class_name.rsplit(".", 1)[-1],
        widths=_widths(model), patch_size=model.patch_size, num_input_channels=int(loaded.num_input_channels),
        num_classes=model.num_classes, parameters=0, flops_per_patch=0,
        volume_shape=[int(s) for s in data.shape[1:]], volume_source=source,
        n_tiles=n_tiles(predictor, tuple(data.shape[1:])),
        mirror_axes=None if model.mirror_axes is None else list(model.mirror_axes), device=str(device),
        device_name=_device_name(device), threads=torch.get_num_threads(), memory_method=memory.method,
        timings=timings, backend=backend, calibration=calibration,
    )


def profile_model(spec: ModelSpec, settings: ProfileSettings) -> ModelProfile:
    """Profile one model on the first backend of ``settings`` (see the module doc)."""
    first = replace(settings, backends=settings.resolved_backends()[:1])
    profiles, skipped = profile_model_backends(spec, first)
    if not profiles:
        raise UserError(next(iter(skipped.values())))
    return profiles[0]


def _profile_in_subprocess(spec: ModelSpec,
                           settings: ProfileSettings) -> tuple[list[ModelProfile], dict[str, str]]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(profile_model_backends, spec, settings).result()


def environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import nnunetv2  # noqa: F401
    import torch

    try:
        nnunet_version = version("nnunetv2")
    except PackageNotFoundError:  # pragma: no cover
        nnunet_version = "unknown"
    return {"python": sys.version.split()[0], "torch": torch.__version__, "nnunetv2": nnunet_version,
            "platform": platform.platform(), "cpu_count": os.cpu_count()}


def profile_models(specs: list[ModelSpec], settings: ProfileSettings, progress=None) -> ProfileReport:
    """Profile each model (in order; ratios are against the first). Without a volume shape or case
    the first model's default volume (2 x its patch size) is used for all models."""
    if not specs:
        raise UserError("give at least one model to profile")
    settings.validate()
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise UserError(f"model labels must be unique, got {', '.join(dupes)} more than once; name them "
                        "LABEL=PATH")
    missing = [s.path for s in specs if not Path(s.path).expanduser().exists()]
    if missing:  # all at once, before minutes of timing
        raise UserError(f"model path(s) not found: {', '.join(missing)} (expected nnU-Net results folders "
                        "Trainer__Plans__Configuration, fold_X folders or .pth checkpoints)")
    results, skipped = [], {}
    run = _profile_in_subprocess if settings.isolate else profile_model_backends
    for spec in specs:
        if progress:
            progress(f"profiling {spec.label} ({spec.path}) on {', '.join(settings.resolved_backends())} ...")
        # isolated: one fresh process per (model, backend), so that one backend's libraries and freed
        # memory do not hide or inflate the next one's peak
        parts = [replace(settings, backends=(b,)) for b in settings.resolved_backends()] if settings.isolate \
            else [settings]
        rows = []
        for part in parts:
            got, missing = run(spec, part)
            rows += got
            skipped.update(missing)
        results += rows
        if rows and settings.volume_shape is None and settings.case_files is None:
            settings = replace(settings, volume_shape=tuple(rows[0].volume_shape))
    if not results:
        raise UserError("no backend could run: " + "; ".join(skipped.values()))
    matmul = measure_matmul_gflops(settings.threads) if settings.device == "cpu" else None
    return ProfileReport(settings=settings, models=results, environment=environment(), skipped=skipped,
                         matmul_gflops=matmul)
