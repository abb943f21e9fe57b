"""The report of ``recokd profile`` (:mod:`recokd.evaluation.profile` measures): the terminal table, and
``profile.json`` / ``profile.csv`` / ``dice_vs_latency.png`` in the output folder, with the conventions
spelled out; Dice read from evaluation summaries for the Dice-vs-latency plot."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recokd.errors import UserError
from recokd.evaluation.profile import (
    FLOPS_COUNTER,
    FLOPS_UNIT,
    MIRROR_MODES,
    ModelProfile,
    ProfileReport,
)
from recokd.json_files import read_json, write_json_atomic
from recokd.report_paths import shown_path, shown_source

# ---------------------------------------------------------------------------- evaluation results


def read_mean_dice(file: str | Path) -> float:
    """Mean foreground Dice from an evaluation summary JSON: ``recokd evaluate``'s ``summary.json``
    (``foreground_mean.dice``), nnU-Net's (``foreground_mean.Dice``) or a flat ``{"mean_dice": x}``."""
    file = Path(file)
    data = read_json(file, "--eval-json:")
    candidates = []
    if isinstance(data, dict):
        fg = data.get("foreground_mean")
        if isinstance(fg, dict):
            candidates += [fg.get("dice"), fg.get("Dice")]
        candidates += [data.get(k) for k in ("mean_dice", "dice", "Dice")]
    for value in candidates:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    keys = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
    raise UserError(f"--eval-json: {file} has no mean Dice (expected a summary.json of recokd evaluate or "
                    f"nnU-Net with foreground_mean.dice/Dice, or a 'mean_dice' number); top-level keys: "
                    f"{keys}")


def dice_latency_points(report: ProfileReport, dice: dict[str, float]) -> tuple[list[dict[str, Any]], str]:
    """Points ``{"label", "dice", "latency_s", "parameters", "flops_per_patch"}`` for the models with a
    Dice, and which latency they use (mirroring off when measured)."""
    mode = "off" if "off" in report.settings.mirroring else "on"
    first_rows = {}
    for m in report.models:  # a model's first backend (several backends: one point per model)
        first_rows.setdefault(m.label, m)
    points = [{"label": m.label, "dice": dice[m.label], "latency_s": m.timings[mode].median_s,
               "parameters": m.parameters, "flops_per_patch": m.flops_per_patch}
              for m in first_rows.values() if m.label in dice]
    return points, mode


def plot_dice_vs_latency(points: list[dict[str, Any]], out_png: Path, title: str, latency_label: str,
                         overwrite: bool = False) -> Path:
    """Dice-vs-latency scatter with :func:`recokd.evaluation.plots.dice_vs_latency`."""
    from recokd.evaluation.plots import dice_vs_latency

    named = [{"name": p["label"], "latency_s": p["latency_s"], "dice": p["dice"]} for p in points]
    return dice_vs_latency(named, out_png, title=title, latency_label=latency_label, overwrite=overwrite)


# ---------------------------------------------------------------------------- output


def _fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    if r == 1:
        return "1"
    return f"1/{1 / r:.1f}" if r < 1 else f"{r:.2f}x"


def header_lines(report: ProfileReport) -> list[str]:
    s, first = report.settings, report.models[0]
    return [
        f"device: {first.device} ({first.device_name}), torch threads: {first.threads}, "
        f"torch {report.environment['torch']}, nnunetv2 {report.environment['nnunetv2']}",
        f"latency: full volume {'x'.join(map(str, first.volume_shape))} ({first.volume_source}), nnU-Net "
        f"sliding window, tile step {s.step_size}, Gaussian weighting; median of {s.repeats} run(s) after "
        f"{s.warmup} warm-up run(s); mirroring TTA: {', '.join(s.mirroring)}",
        f"FLOPs: {FLOPS_UNIT}, counted by {FLOPS_COUNTER}",
        f"peak memory: {first.memory_method}",
        "ratios: parameters and FLOPs as this/first row, speed-ups as first/this row; 'same backend': "
        "against the first model on the row's backend",
        "GFLOP/s: FLOPs/patch x tiles x passes per tile / median time"
        + (f"; machine fp32 matmul (torch.mm 2048^2, {first.threads} threads): {report.matmul_gflops:.0f} "
           "GFLOP/s" if report.matmul_gflops else ""),
        *(f"note: {reason}" for reason in report.skipped.values()),
        *sorted({f"note: {m.label} allows no mirroring axes (its checkpoint's "
                 "inference_allowed_mirroring_axes is None, e.g. trained without augmentation): mirroring "
                 "'on' runs one pass per tile" for m in report.models
                 if m.mirror_axes is None and "on" in s.mirroring}),
        *sorted({f"note: {m.label} openvino-int8 calibrated on {m.calibration}" for m in report.models
                 if m.calibration}),
    ]


def format_table(report: ProfileReport, dice: dict[str, float] | None = None) -> str:
    dice = dice or {}
    cols = ["model", "backend", "params", "ratio", "FLOPs/patch", "ratio", "patch", "tiles", "peak mem"]
    for mode in report.settings.mirroring:
        cols += [f"time mirror {mode}", "speed-up", "same backend", "GFLOP/s"]
    if dice:
        cols.append("Dice")
    rows = []
    for m in report.models:
        r = report.ratios(m)
        peak = max((t.peak_memory_bytes for t in m.timings.values()), default=0)
        row = [m.label, m.backend, _fmt_count(m.parameters), _fmt_ratio(r["parameters_ratio"]),
               _fmt_count(m.flops_per_patch), _fmt_ratio(r["flops_ratio"]), "x".join(map(str, m.patch_size)),
               str(m.n_tiles),
               f"{peak / 2**20:.0f} MiB"]
        for mode in report.settings.mirroring:
            t = m.timings[mode]
            sp, same = r[f"speedup_mirroring_{mode}"], r[f"speedup_same_backend_mirroring_{mode}"]
            rate = m.gflops_per_s(mode)
            row += [f"{t.median_s:.3f} s", "-" if sp is None else f"{sp:.2f}x",
                    "-" if same is None else f"{same:.2f}x", "-" if rate is None else f"{rate:.1f}"]
        if dice:
            row.append(f"{dice[m.label]:.4f}" if m.label in dice else "-")
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    def line(values: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True)))

    lines = [line(cols), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    return "\n".join(header_lines(report) + [""] + lines + stage_lines(report))


def stage_lines(report: ProfileReport) -> list[str]:
    """With ``--case``: the per-stage split of that case as ``recokd predict`` spends it (read,
    preprocess, network = sliding window (median), export), one row per model, backend and mirroring."""
    models = [m for m in report.models if m.stages]
    if not models:
        return []
    out = ["", f"per-stage split of the case, seconds ({models[0].resampling} resampling; network: the "
               "sliding window's median; export: resampling back, argmax, writing):",
           "model  backend  mirroring  read  preprocess  network  export  total  network share"]
    for m in models:
        for mode, timing in m.timings.items():
            parts = [m.stages["read"].seconds, m.stages["preprocess"].seconds, timing.median_s,
                     m.stages["export"].seconds]
            total = sum(parts)
            out.append(f"{m.label}  {m.backend}  {mode}  " + "  ".join(f"{x:.3f}" for x in parts)
                       + f"  {total:.3f}  {timing.median_s / total:.0%}")
    return out


def _model_files_shown(m: ModelProfile, base: str | Path | None) -> dict[str, str]:
    """A model row's file fields as a report in ``base`` shows them (:mod:`recokd.report_paths`)."""
    return {"path": shown_path(m.path, base), "checkpoint": shown_path(m.checkpoint, base),
            "volume_source": shown_source(m.volume_source, base)}


def report_dict(report: ProfileReport, dice: dict[str, float] | None = None,
                base: str | Path | None = None) -> dict[str, Any]:
    """The profile.json content; paths relative to ``base`` (the report's folder) when given."""
    dice = dice or {}
    settings = asdict(report.settings)
    if settings.get("case_files"):
        settings["case_files"] = [shown_path(f, base) for f in settings["case_files"]]
    return {
        "conventions": {
            "flops_unit": FLOPS_UNIT, "flops_counter": FLOPS_COUNTER,
            "flops_input": "batch 1, one patch of the configuration's patch size, deep supervision off",
            "parameters": "sum of numel over network.parameters()",
            "latency": "wall clock of nnUNetPredictor.predict_sliding_window_return_logits on the full "
                       "volume, after warm-up, median of repeats; preprocessing/export not included (with "
                       "--case: models[].stages, each timed once)",
            "peak_memory": report.models[0].memory_method if report.models else "",
            "ratios": "parameters/FLOPs: this/first row; speed-ups: first/this row; same backend: first "
                      "model on this row's backend / this row",
            "gflops_per_s": "FLOPs per patch x tiles x passes per tile / median latency",
            "matmul_gflops": "torch.mm of two 2048x2048 float32 matrices on the profile's threads, median "
                             "of 5",
        },
        "settings": settings,
        "environment": report.environment,
        "matmul_gflops": report.matmul_gflops,
        "skipped_backends": report.skipped,
        "models": [{**asdict(m), **_model_files_shown(m, base), **report.ratios(m), "dice": dice.get(m.label),
                    **{f"gflops_per_s_mirroring_{mode}": m.gflops_per_s(mode) for mode in MIRROR_MODES}}
                   for m in report.models],
    }


def report_csv(report: ProfileReport, dice: dict[str, float] | None = None,
               base: str | Path | None = None) -> str:
    """The profile.csv content; paths relative to ``base`` (the report's folder) when given."""
    dice = dice or {}
    fields = ["label", "backend", "path", "plans", "configuration", "parameters", "parameters_ratio",
              "flops_per_patch",
              "flops_ratio", "flops_unit", "patch_size", "volume_shape", "n_tiles", "device", "threads",
              "step_size"]
    for mode in MIRROR_MODES:
        fields += [f"time_mirroring_{mode}_median_s", f"speedup_mirroring_{mode}",
                   f"speedup_same_backend_mirroring_{mode}", f"gflops_per_s_mirroring_{mode}",
                   f"peak_memory_mirroring_{mode}_bytes"]
    fields.append("dice")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for m in report.models:
        r = report.ratios(m)
        row = {"label": m.label, "backend": m.backend, "path": shown_path(m.path, base), "plans": m.plans,
               "configuration": m.configuration,
               "parameters": m.parameters, "parameters_ratio": r["parameters_ratio"],
               "flops_per_patch": m.flops_per_patch, "flops_ratio": r["flops_ratio"],
               "flops_unit": FLOPS_UNIT, "patch_size": "x".join(map(str, m.patch_size)),
               "volume_shape": "x".join(map(str, m.volume_shape)),
               "n_tiles": m.n_tiles, "device": m.device, "threads": m.threads,
               "step_size": report.settings.step_size, "dice": dice.get(m.label)}
        for mode in MIRROR_MODES:
            t = m.timings.get(mode)
            row[f"time_mirroring_{mode}_median_s"] = t.median_s if t else None
            row[f"speedup_mirroring_{mode}"] = r[f"speedup_mirroring_{mode}"]
            row[f"speedup_same_backend_mirroring_{mode}"] = r[f"speedup_same_backend_mirroring_{mode}"]
            row[f"gflops_per_s_mirroring_{mode}"] = m.gflops_per_s(mode)
            row[f"peak_memory_mirroring_{mode}_bytes"] = t.peak_memory_bytes if t else None
        writer.writerow(row)
    return buf.getvalue()


#: files written into the output folder
OUTPUT_FILES = {"json": "profile.json", "csv": "profile.csv", "png": "dice_vs_latency.png"}


def write_report(report: ProfileReport, out_dir: str | Path, dice: dict[str, float] | None = None,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write profile.json, profile.csv (and dice_vs_latency.png when ``dice`` has entries) into
    ``out_dir``; existing files are only replaced with ``overwrite``."""
    out_dir = Path(out_dir).expanduser()
    targets = {k: out_dir / v for k, v in OUTPUT_FILES.items() if k != "png" or dice}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace, or choose "
                        "another -o folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(targets["json"], report_dict(report, dice, base=out_dir))
    targets["csv"].write_text(report_csv(report, dice, base=out_dir), encoding="utf-8")
    if dice:
        points, mode = dice_latency_points(report, dice)
        first = report.models[0]
        title = (f"Dice vs latency: {first.device} ({first.threads} threads), volume "
                 f"{'x'.join(map(str, first.volume_shape))}, step {report.settings.step_size}, "
                 f"mirroring {mode}")
        plot_dice_vs_latency(points, targets["png"], title, f"full-volume latency per case, mirroring {mode} "
                             "(s, wall clock, median)", overwrite=overwrite)
    return targets
