"""``benchmarks/studies/unlabelled.toml`` (issue 27) loads and describes the benches it should: the evidence
study's data and teacher (its folder, or the study's own with ``--tiny``), the extra unlabelled phantoms, the
sweeps with and without ``--pseudo-label-loss``, the final benches at U = 39 / 200 (and t = 2 at U = 39) and
the label-free ones (no training here; tests/test_unlabelled_study.py runs it on tiny settings)."""

from __future__ import annotations

from pathlib import Path

from recokd.bench.study import load_study
from recokd.bench.study_steps import bench_argv
from recokd.cli import build_parser
from tests.doc_blocks import ROOT

STUDY = ROOT / "benchmarks/studies/unlabelled.toml"


def _benches(tiny: bool, folder: Path) -> dict[str, object]:
    study = load_study(STUDY, tiny=tiny, folder=folder)
    return {Path(s.fields["output"]).relative_to(folder).as_posix(): build_parser().parse_args(
        ["bench", *bench_argv(s)]) for s in study.steps if s.kind == "bench"}


def test_the_steps_and_the_shared_data(tmp_path: Path) -> None:
    study = load_study(STUDY, folder=tmp_path / "unlabelled")
    assert study.default_steps() == [
        "data", "teacher", "unlabelled-data", "sweep", "sweep-warmup", "final-u39", "final-u200",
        "final-u39-t2", "label-free"
    ]
    assert "sweep-plain" in study.step_names()  # stopped part-way: run only when named
    evidence = tmp_path / "unlabelled/../evidence/data"
    assert study.env["nnUNet_raw"] == str(evidence / "nnUNet_raw")
    assert study.variables["teacher"] == str(
        evidence / "nnUNet_results/Dataset801_P32s2p0/nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres")
    tiny = load_study(STUDY, tiny=True, folder=tmp_path / "t")
    assert tiny.env["nnUNet_raw"] == str(tmp_path / "t/data/nnUNet_raw")  # everything in the tiny folder


def test_the_benches(tmp_path: Path) -> None:
    benches = _benches(False, tmp_path)
    assert list(benches) == ["sweep/pseudo-label-loss", "sweep/plain", "sweep/warmup-0", "sweep/warmup-0.6",
                             "final-u39", "final-u200", "final-u39-t2", "label-free-u39", "label-free-u200"]
    for name, args in benches.items():
        t = "2" if name.endswith("-t2") else "3"
        assert (args.dataset, args.t, args.optimizer) == ("801", t, "adam") and args.no_augmentation, name
        assert (args.epochs, args.iters_per_epoch) == (20, 50), name
        assert args.unlabelled_images.endswith("Dataset804_P32s2p0Unlabelled/imagesTr"), name
        assert args.jobs == 1, name
        assert ("pseudo" in args.methods.split(",")) == ("warmup" not in name), name
    assert benches["sweep/plain"].seed_list == "0" and not benches["sweep/plain"].pseudo_label_loss
    assert benches["sweep/pseudo-label-loss"].pseudo_label_loss
    assert {"reco+logits:100", "reco:1000", "cwd:100", "reco:100+logits"} <= set(
        benches["sweep/plain"].methods.split(","))
    assert [benches[f"sweep/warmup-{w}"].warmup for w in ("0", "0.6")] == [0.0, 0.6]
    assert benches["sweep/warmup-0"].methods == "logits,reco+logits,reco,dist,cwd"
    assert benches["final-u39"].warmup == 0.2
    for name, u in (("final-u39", 39), ("final-u200", 200)):
        args = benches[name]
        assert (args.labelled_cases, args.unlabelled_cases, args.seeds, args.test_images) == (9, u, 5, None)
        assert args.methods == "pseudo,logits,reco+logits,reco,dist,cwd"
    wide = benches["final-u39-t2"]
    assert (wide.labelled_cases, wide.unlabelled_cases, wide.seeds, wide.warmup) == (9, 39, 5, 0.2)
    assert wide.methods == "pseudo,dist,reco+logits" and wide.pseudo_label_loss
    for name, u in (("label-free-u39", 39), ("label-free-u200", 200)):
        args = benches[name]
        assert (args.labelled_cases, args.unlabelled_cases, args.warmup) == (0, u, 0.0)
        assert args.methods == "pseudo,logits,reco+logits"
    sets = ["rl_method=reco:10+logits", "final_pll=false", "jobs=2", "final_warmup=0.6"]
    swept = load_study(STUDY, sets=sets, folder=tmp_path)
    args = build_parser().parse_args(["bench", *bench_argv(swept.select(["final-u39"])[0])])
    assert "reco:10+logits" in args.methods.split(",") and not args.pseudo_label_loss and args.jobs == 2
    assert args.warmup == 0.6
    wide = build_parser().parse_args(["bench", *bench_argv(swept.select(["final-u39-t2"])[0])])
    assert wide.methods == "pseudo,dist,reco:10+logits"  # the wide students follow the swept settings
