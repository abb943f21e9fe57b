"""The clinic's figure: one realistic scan through ``recokd predict``'s stages, end to end, on a CPU.

Scans (synthetic intensities; the geometry is what matters here):

- ``ct``: 512 x 512 x 200 voxels at 0.7 x 0.7 x 2.5 mm (int16 HU, standard-normal noise around 40 HU
  with sd 200), planned by nnU-Net's own ``ExperimentPlanner`` (3d_fullres, CT normalisation) with
  its target spacing set to (2.0, 0.8, 0.8) mm, so nnU-Net resamples the image to 250 x 448 x 448
  before the network and the class maps back after it; 8 and 16 classes.
- ``mr``: 256^3 at 1 mm, planned at 1 mm (no resampling), z-score normalisation.

Models: nnU-Net's planned teacher (PlainConvUNet, widths 32..320) and the t=2 / t=3 students of
its plans (:func:`recokd.nnunet.plans.scale_plans`), random weights: only time is measured here
(accuracy of the resampling paths: ``benchmarks/resampling_accuracy.py``).

Stages, each timed with nnU-Net's own code, as its predictor runs them on one case:

1. read: ``SimpleITKIO.read_images``;
2. preprocess: ``DefaultPreprocessor.run_case_npy`` (crop, normalisation, resampling to the plan):
   nnU-Net's default resampling (``resample_data_or_seg_to_shape``) or ``--resampling torch``
   (``resample_torch_fornnunet``, :mod:`recokd.nnunet.resampling`);
3. network: the sliding window. ``tiles x passes x t_tile``, where ``t_tile`` is the median time of
   the backend's network on one tile (``--tile-repeats`` runs after a warm-up; passes = 8 with
   mirroring TTA), plus the sliding window's own work (Gaussian weighting, fp16 accumulation,
   padding, flips: ``predict_sliding_window_return_logits`` over the whole volume with a network that
   returns a fixed random tensor, timed once per class count and TTA setting). The teacher's full
   sliding window on the CT scan would take about half an hour here, so every row is computed this
   way, and ``--check`` runs one row (the t=2 student, fp32 PyTorch, no TTA) for real to show the
   estimate's error;
4. export: ``convert_predicted_logits_to_segmentation_with_correct_shape`` (resampling the fp16
   class maps back, argmax, crop reverted) + ``SimpleITKIO.write_seg``, on the logits stage 3 returned.

Backends (:mod:`recokd.deploy.backends`): ``torch`` (eager, stock kernels: ``nnUNetv2_predict``),
``torch-onednn`` (``recokd predict``'s CPU kernels), ``openvino`` (fp32), ``openvino-int8`` (NNCF,
calibrated on synthetic tiles: speed only). The reference row is what users run today:
``nnUNetv2_predict`` with the stock teacher, one fold, mirroring, nnU-Net's resampling; nnU-Net's
5-fold default is that with the network stage five times.

Peak memory: the RSS high-water mark above the stage's start (:class:`recokd.evaluation.profile.PeakMemory`).

    python benchmarks/end_to_end.py [--scans ct,mr] [--classes 8,16] [--check] [--tiny]

Writes ``benchmarks/results/deploy/end_to_end.{json,md}`` (``--out``). Nothing is asserted: it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.mkdtemp(prefix="recokd_e2e_"))
for _name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # before nnunetv2 is imported
    os.environ[_name] = str(WORK / _name)

sys.path.insert(0, str(ROOT))  # benchmarks.inference

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.inference import time_tile  # noqa: E402
from recokd.deploy.backends import prepare_network, synthetic_calibration, unavailable_reason  # noqa: E402
from recokd.evaluation.profile import PeakMemory  # noqa: E402
from recokd.evaluation.stages import export_case, measure, preprocess_case, read_case  # noqa: E402
from recokd.nnunet.plans import build_network, scale_plans  # noqa: E402
from recokd.nnunet.resampling import with_torch_resampling  # noqa: E402

CONFIG = "3d_fullres"
RESAMPLINGS = ("nnunet", "torch")
WIDE_STEP = 0.75  #: the sliding window's tile step of the fewer-tiles variant (nnU-Net's default: 0.5)


@dataclass(frozen=True)
class Scan:
    name: str
    shape: tuple[int, int, int]  #: (z, y, x) voxels
    spacing: tuple[float, float, float]  #: (z, y, x) mm
    plan_spacing: tuple[float, float, float]
    modality: str  #: nnU-Net channel name: "CT" -> CT normalisation, else z-score


SCANS = {
    "ct": Scan("CT-like 512x512x200 @ 0.7x0.7x2.5 mm, plan (2.0, 0.8, 0.8) mm", (200, 512, 512),
               (2.5, 0.7, 0.7), (2.0, 0.8, 0.8), "CT"),
    "mr": Scan("MR-like 256^3 @ 1 mm, plan 1 mm", (256, 256, 256), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), "MRI"),
}
TINY = {
    "ct": Scan("tiny CT-like", (24, 64, 64), (2.5, 0.7, 0.7), (2.0, 0.8, 0.8), "CT"),
    "mr": Scan("tiny MR-like", (48, 48, 48), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), "MRI"),
}


def plan(scan: Scan, classes: int, dataset_id: int) -> tuple[dict, dict]:
    """nnU-Net's default planner on a fingerprint of ten cases like ``scan``; (plans, dataset.json)."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    name = f"Dataset{dataset_id:03d}_E2E"
    raw, pre = WORK / "nnUNet_raw" / name, WORK / "nnUNet_preprocessed" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    pre.mkdir(parents=True)
    dataset_json = {"channel_names": {"0": scan.modality}, "file_ending": ".nii.gz", "numTraining": 10,
                    "labels": {"background": 0, **{f"class{c}": c for c in range(1, classes)}}}
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    intensities = {"max": 3071.0, "mean": 40.0, "median": 40.0, "min": -1024.0, "percentile_00_5": -500.0,
                   "percentile_99_5": 600.0, "std": 200.0}
    fingerprint = {"foreground_intensity_properties_per_channel": {"0": intensities},
                   "median_relative_size_after_cropping": 1.0,
                   "shapes_after_crop": [list(scan.shape)] * 10, "spacings": [list(scan.spacing)] * 10}
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    class Planner(ExperimentPlanner):  # no images on disk: the reader is the one .nii.gz takes
        def determine_reader_writer(self):
            return SimpleITKIO

    with contextlib.redirect_stdout(io.StringIO()):
        planner = Planner(dataset_id, overwrite_target_spacing=scan.plan_spacing)
        plans = planner.plan_experiment()
    return plans, dataset_json


def write_scan(scan: Scan, file: Path) -> None:
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    array = np.clip(rng.normal(40, 200, scan.shape), -1024, 3071).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(scan.spacing)))
    sitk.WriteImage(image, str(file), useCompression=True)


class RandomLogits(torch.nn.Module):
    """Stands in for a network inside nnU-Net's sliding window: a fixed random tile of logits (the
    window's own cost, without the network's)."""

    def __init__(self, classes: int, patch: tuple[int, ...]):
        super().__init__()
        seeded = torch.Generator().manual_seed(0)
        self.register_buffer("tile", torch.randn(1, classes, *patch, generator=seeded))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a new tensor, as a network's last convolution writes one (nnU-Net scales it in place)
        return self.tile.expand(x.shape[0], *self.tile.shape[1:]).clone()


def predictor_for(plans_manager, configuration_manager, dataset_json, network, mirroring: bool,
                  step: float = 0.5):
    """nnU-Net's predictor around ``network`` (no file I/O, no torch.compile)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.plans_manager = plans_manager
    predictor.configuration_manager = configuration_manager
    predictor.list_of_parameters = [network.state_dict()]
    predictor.network = network
    predictor.dataset_json = dataset_json
    predictor.trainer_name = "nnUNetTrainer"
    predictor.allowed_mirroring_axes = (0, 1, 2)
    predictor.label_manager = plans_manager.get_label_manager(dataset_json)
    return predictor


def run_scan(key: str, scan: Scan, classes_list: list[int], models: list[str], backends: list[str],
             args: argparse.Namespace, dataset_id: int) -> dict:
    """Every stage of ``scan`` for every class count, model, backend, TTA and resampling path."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    memory = PeakMemory(torch.device("cpu"))
    out: dict = {"scan": scan.name, "shape_zyx": scan.shape, "spacing_zyx": scan.spacing, "classes": {}}
    for i, classes in enumerate(classes_list):
        plans, dataset_json = plan(scan, classes, dataset_id + i)
        pm = PlansManager(plans)
        managers = {"nnunet": pm.get_configuration(CONFIG)}
        managers["torch"] = with_torch_resampling(managers["nnunet"], torch.get_num_threads())
        patch = tuple(managers["nnunet"].patch_size)
        entry: dict = {"patch": patch, "plan_spacing": managers["nnunet"].spacing, "stages": {},
                       "network": {}}
        out["classes"][classes] = entry
        stages = entry["stages"]
        file = WORK / f"{key}_0000.nii.gz"
        if not file.exists():
            write_scan(scan, file)
        print(f"[{key}, {classes} classes] patch {patch} at {managers['nnunet'].spacing} mm", flush=True)

        (data, props), timing = measure(memory, read_case, pm, [str(file)])
        stages["read"] = {"s": timing.seconds, "peak_bytes": timing.peak_memory_bytes}
        print(f"  read {timing.seconds:.1f} s", flush=True)
        preprocessed = {}
        for res in RESAMPLINGS:
            (volume, properties), timing = measure(memory, preprocess_case, data, props, pm, managers[res],
                                                   dataset_json)
            preprocessed[res] = (volume, properties)
            stages[f"preprocess_{res}"] = {"s": timing.seconds, "peak_bytes": timing.peak_memory_bytes}
            print(f"  preprocess ({res} resampling) {timing.seconds:.1f} s -> {tuple(volume.shape[1:])}",
                  flush=True)
        volume, properties = preprocessed["nnunet"]
        entry["preprocessed_shape"] = tuple(volume.shape[1:])

        # the sliding window's own work, and the logits the export gets
        logits = None
        for tta in (False, True):
            predictor = predictor_for(pm, managers["nnunet"], dataset_json, RandomLogits(classes, patch), tta)
            entry["tiles"] = len(predictor._internal_get_sliding_window_slicers(tuple(volume.shape[1:])))
            result, timing = measure(memory, predictor.predict_sliding_window_return_logits, volume)
            t = timing.seconds
            stages[f"window_{'tta' if tta else 'plain'}"] = {"s": t, "peak_bytes": timing.peak_memory_bytes}
            logits = result if logits is None else logits
            print(f"  sliding window without the network ({'TTA' if tta else 'no TTA'}): {t:.1f} s, "
                  f"{entry['tiles']} tiles", flush=True)
        entry["logits_dtype"] = str(logits.dtype)
        # fewer overlapping tiles (issue 29 item 3): step 0.75, no TTA; accuracy: resampling_accuracy.py
        predictor = predictor_for(pm, managers["nnunet"], dataset_json, RandomLogits(classes, patch), False,
                                  step=WIDE_STEP)
        entry["tiles_wide"] = len(predictor._internal_get_sliding_window_slicers(tuple(volume.shape[1:])))
        _, timing = measure(memory, predictor.predict_sliding_window_return_logits, volume)
        stages["window_wide"] = {"s": timing.seconds, "peak_bytes": timing.peak_memory_bytes}
        print(f"  sliding window without the network (step {WIDE_STEP}): {timing.seconds:.1f} s, "
              f"{entry['tiles_wide']} tiles", flush=True)
        for res in RESAMPLINGS:
            target = WORK / f"{key}_{classes}_{res}_seg.nii.gz"
            _, timing = measure(memory, export_case, logits, pm, managers[res], dataset_json, properties,
                                target)
            stages[f"export_{res}"] = {"s": timing.seconds, "peak_bytes": timing.peak_memory_bytes}
            print(f"  export ({res} resampling) {timing.seconds:.1f} s, peak "
                  f"{timing.peak_memory_bytes / 2**30:.2f} GiB", flush=True)
        del logits

        if i > 0:  # the class count changes only the last 1x1x1 convolution: tile times measured once
            entry["network"] = out["classes"][classes_list[0]]["network"]
            entry["network_from"] = classes_list[0]
            continue
        for model in models:
            time_networks(entry, model, plans, dataset_json, backends, patch, args)
        if args.check and "t2" in models and "torch-onednn" in backends:
            check_estimate(entry, plans, dataset_json, pm, managers["nnunet"], volume, memory)
    return out


def student_network(plans: dict, dataset_json: dict, model: str) -> torch.nn.Module:
    """The teacher's (``"teacher"``) or a t-student's (``"t2"``) network of ``plans``, random weights."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_plans = plans if model == "teacher" else scale_plans(plans, CONFIG, int(model[1:]))
    pm = PlansManager(model_plans)
    network = build_network(pm, pm.get_configuration(CONFIG), dataset_json, deep_supervision=False)
    return network.eval()


def time_networks(entry: dict, model: str, plans: dict, dataset_json: dict, backends: list[str],
                  patch: tuple[int, ...], args: argparse.Namespace) -> None:
    """Seconds per tile of ``model`` on each backend, into ``entry["network"]``."""
    network = student_network(plans, dataset_json, model)
    for backend in backends:
        reason = unavailable_reason(backend)
        if reason:
            print(f"  {reason}")
            continue
        calibration = synthetic_calibration((1, 1, *patch), count=args.calibration_tiles) \
            if backend == "openvino-int8" else None
        module = prepare_network(backend, network, (1, 1, *patch), threads=torch.get_num_threads(),
                                 calibration=calibration)
        t = time_tile(module, torch.randn(1, 1, *patch), args.tile_repeats)
        entry["network"][f"{model}/{backend}"] = {"tile_s": t}
        print(f"  {model} {backend}: {t:.2f} s per tile", flush=True)


def check_estimate(entry: dict, plans: dict, dataset_json: dict, plans_manager, configuration_manager,
                   volume: torch.Tensor, memory: PeakMemory) -> None:
    """The t=2 student's full sliding window (recokd predict's CPU kernels, no TTA) for real, beside
    the estimate every row uses."""
    network = student_network(plans, dataset_json, "t2")
    module = prepare_network("torch-onednn", network, (1, 1, *entry["patch"]))
    predictor = predictor_for(plans_manager, configuration_manager, dataset_json, module, False)
    _, timing = measure(memory, predictor.predict_sliding_window_return_logits, volume)
    real = timing.seconds
    tile = entry["network"]["t2/torch-onednn"]["tile_s"]
    estimate = tile * entry["tiles"] + entry["stages"]["window_plain"]["s"]
    entry["check"] = {"row": "t2 / torch-onednn / no TTA", "measured_s": real, "estimated_s": estimate}
    print(f"  check: full sliding window {real:.1f} s, estimate {estimate:.1f} s", flush=True)


def rows(entry: dict) -> list[dict]:
    """Every (model, backend, TTA, resampling) combination's per-stage seconds."""
    st, out = entry["stages"], []
    for name, net in entry["network"].items():
        model, backend = name.split("/")
        variants = [(False, 0.5, "window_plain", entry["tiles"]), (True, 0.5, "window_tta", entry["tiles"]),
                    (False, WIDE_STEP, "window_wide", entry["tiles_wide"])]
        for tta, step, window_key, tiles in variants:
            passes = 8 if tta else 1
            for res in RESAMPLINGS:
                stages = {"read": st["read"]["s"], "preprocess": st[f"preprocess_{res}"]["s"],
                          "network": net["tile_s"] * tiles * passes + st[window_key]["s"],
                          "export": st[f"export_{res}"]["s"]}
                out.append({"model": model, "backend": backend, "tta": tta, "step": step, "resampling": res,
                            **stages, "total": sum(stages.values())})
    return out


def targets(by: dict, stock: dict | None) -> list[str]:
    """Issue 29's three targets, each met or missed, from one scan's rows (one fold, step 0.5)."""
    out = ["Targets (issue 29):\n"]
    for res in RESAMPLINGS:
        for backend in ("torch-onednn", "openvino"):
            t2 = by.get(("t2", backend, False, 0.5, res))
            teacher = by.get(("teacher", backend, False, 0.5, res))
            if t2 and teacher:
                ratio = teacher["total"] / t2["total"]
                out.append(f"- fp32 t=2 vs fp32 teacher, {backend}, no TTA, {res} resampling: {ratio:.1f}x "
                           f"({'met' if ratio >= 10 else 'missed'}, target >= 10x)")
    for res in RESAMPLINGS:
        int8 = by.get(("t2", "openvino-int8", False, 0.5, res))
        if int8 and stock:
            ratio = stock["total"] / int8["total"]
            out.append(f"- int8 t=2, no TTA, {res} resampling vs the stock teacher through nnUNetv2_predict "
                       f"(1 fold, TTA, nnU-Net's resampling): {ratio:.1f}x "
                       f"({'met' if ratio >= 100 else 'missed'}, target >= 100x)")
    for res in RESAMPLINGS:
        row = by.get(("t2", "openvino", False, 0.5, res))
        if row:
            share = (row["preprocess"] + row["export"]) / row["total"]
            out.append(f"- preprocessing (with resampling) + export of the fp32 t=2 student (OpenVINO, no "
                       f"TTA, {res} resampling): {share:.0%} of its end-to-end time "
                       f"({'met' if share <= 0.25 else 'missed'}, target <= 25%)")
    return [*out, ""]


def report(results: dict, args: argparse.Namespace, cpu: str) -> str:
    lines = [f"# End to end on a CPU: one scan through recokd predict's stages ({cpu}, "
             f"{torch.get_num_threads()} threads)\n",
             "Random weights (time only); network = tiles x passes x median tile time + the sliding "
             "window's own work (see benchmarks/end_to_end.py). Seconds per case; one fold.\n"]
    for scan in results.values():
        for classes, entry in scan["classes"].items():
            all_rows = rows(entry)
            by = {(r["model"], r["backend"], r["tta"], r["step"], r["resampling"]): r for r in all_rows}
            stock = by.get(("teacher", "torch", True, 0.5, "nnunet"))
            peaks = ", ".join(f"{r} {entry['stages'][f'export_{r}']['peak_bytes'] / 2**30:.2f} GiB"
                              for r in RESAMPLINGS)
            lines += [f"\n## {scan['scan']}, {classes} classes\n",
                      f"Preprocessed {tuple(entry['preprocessed_shape'])} voxels, patch "
                      f"{tuple(entry['patch'])}, {entry['tiles']} tiles (step 0.5); logits "
                      f"{entry['logits_dtype']}. Peak memory of the export: {peaks}.\n"]
            if "network_from" in entry:
                lines.append(f"Network tile times: those measured with {entry['network_from']} classes "
                             "(the class count changes only the last 1x1x1 convolution).\n")
            if "check" in entry:
                c = entry["check"]
                lines.append(f"Estimate check ({c['row']}): full sliding window {c['measured_s']:.1f} s, "
                             f"estimated {c['estimated_s']:.1f} s.\n")
            lines += targets(by, stock)
            lines += ["| model | backend | TTA | step | resampling | read | preprocess | network | export | "
                      "total | outside the network | x stock (nnUNetv2_predict, 1 fold) | x teacher (same "
                      "settings) |",
                      "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            order = ("tta", "step", "resampling", "model", "backend")
            for r in sorted(all_rows, key=lambda r: tuple(r[k] for k in order)):
                same = by.get(("teacher", r["backend"], r["tta"], r["step"], r["resampling"]))
                vs_stock = f"{stock['total'] / r['total']:.1f}x" if stock else ""
                vs_teacher = f"{same['total'] / r['total']:.1f}x" if same else ""
                cells = [r["model"], r["backend"], "on" if r["tta"] else "off", str(r["step"]),
                         r["resampling"],
                         *(f"{r[k]:.1f}" for k in ("read", "preprocess", "network", "export", "total")),
                         f"{1 - r['network'] / r['total']:.0%}", vs_stock, vs_teacher]
                lines.append("| " + " | ".join(cells) + " |")
            if stock:
                five = stock["total"] + 4 * (stock["network"])
                lines.append(f"\nnnU-Net's default (5 folds x mirroring, stock teacher): {five:.0f} s "
                             "(the 1-fold row with the network stage five times).")
    lines.append(f"\nCommand: `python benchmarks/end_to_end.py {' '.join(sys.argv[1:])}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scans", default="ct,mr")
    p.add_argument("--classes", default="8,16")
    p.add_argument("--models", default="teacher,t2,t3")
    p.add_argument("--backends", default="torch,torch-onednn,openvino,openvino-int8")
    p.add_argument("--tile-repeats", type=int, default=3)
    p.add_argument("--calibration-tiles", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--check", action="store_true", help="also run the t=2 fp32 row's sliding window for real")
    p.add_argument("--tiny", action="store_true", help="tiny scans (a smoke test; figures mean nothing)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/deploy")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    catalogue = TINY if args.tiny else SCANS
    results, dataset_id = {}, 900
    for key in args.scans.split(","):
        classes = [int(c) for c in args.classes.split(",")] if key == "ct" else [8]
        results[key] = run_scan(key, catalogue[key], classes, args.models.split(","),
                                args.backends.split(","), args, dataset_id)
        dataset_id += 10
    text = report(results, args, cpu)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "end_to_end_tiny" if args.tiny else "end_to_end"
    (args.out / f"{stem}.json").write_text(json.dumps({"cpu": cpu, "threads": torch.get_num_threads(),
                                                       "results": results}, indent=1, default=str))
    (args.out / f"{stem}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
