"""``benchmarks/studies/atlas_unlabelled.toml`` (issue 27 on real anatomy) loads and describes the benches it
should: the atlas study's data and AdamW teacher (its folder, or the study's own with ``--tiny``), the extra
unlabelled deformations, the benches at U = 31 / 91 and the label-free one, at the phantom sweep's weights
or others passed in by ``--set`` (no training here)."""

from __future__ import annotations

from pathlib import Path

from recokd.bench.study import load_study
from recokd.bench.study_steps import bench_argv
from recokd.cli import build_parser
from tests.doc_blocks import ROOT

STUDY = ROOT / "benchmarks/studies/atlas_unlabelled.toml"


def _benches(folder: Path, sets: list[str] | None = None, tiny: bool = False) -> dict[str, object]:
    study = load_study(STUDY, tiny=tiny, folder=folder, sets=sets or [])
    return {Path(s.fields["output"]).relative_to(folder).as_posix(): build_parser().parse_args(
        ["bench", *bench_argv(s)]) for s in study.steps if s.kind == "bench"}


def test_the_steps_and_the_atlas_studys_data(tmp_path: Path) -> None:
    study = load_study(STUDY, folder=tmp_path / "atlas-unlabelled")
    assert study.default_steps() == [
        "data", "teacher", "unlabelled-data", "final", "final-large", "label-free"]
    atlas = tmp_path / "atlas-unlabelled/../atlas/data"
    assert study.env["nnUNet_raw"] == str(atlas / "nnUNet_raw")
    assert study.variables["teacher"] == str(
        atlas / "nnUNet_results_adamw/Dataset811_Subcortical/nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres")
    teacher = study.select(["teacher"])[0]
    # atlas.toml's teacher-adamw
    assert teacher.fields["optimizer"] == "adam" and teacher.fields["epochs"] == 30
    tiny = load_study(STUDY, tiny=True, folder=tmp_path / "t")
    assert tiny.env["nnUNet_raw"] == str(tmp_path / "t/data/nnUNet_raw")  # everything in the tiny folder


def test_the_benches(tmp_path: Path) -> None:
    benches = _benches(tmp_path)
    assert list(benches) == ["final-u31", "final-u91", "label-free-u40"]
    for name, args in benches.items():
        assert (args.dataset, args.t, args.optimizer) == ("811", "2", "adam"), name
        assert args.teacher_optimizer == "adam", name
        assert (args.epochs, args.iters_per_epoch, args.seeds) == (20, 50, 3) and args.no_augmentation, name
        assert args.unlabelled_images.endswith("Dataset814_SubcorticalUnlabelled/imagesTr"), name
        assert args.small_classes == "Pallidum_L,Pallidum_R,Amygdala_L,Amygdala_R", name
        assert args.pseudo_label_loss, name
        assert args.test_images is None, name  # the dataset's held-out cases
    pools = [(benches[n].labelled_cases, benches[n].unlabelled_cases) for n in benches]
    assert pools == [(9, 31), (9, 91), (0, 40)]
    # the phantom sweep's weights, and DIST beside the methods in the benches with labels
    assert [benches[n].methods for n in benches] == ["pseudo,logits,reco:100+logits,dist:10"] * 2 + [
        "pseudo,logits,reco:100+logits"]
    assert benches["label-free-u40"].warmup == 0.0
    swept = _benches(tmp_path, ["rl_method=reco:10+logits", "logits_method=logits:100", "final_pll=false"])
    assert swept["final-u31"].methods == "pseudo,logits:100,reco:10+logits,dist:10"
    assert swept["label-free-u40"].methods == "pseudo,logits:100,reco:10+logits"
    assert not swept["final-u91"].pseudo_label_loss
    tiny = _benches(tmp_path, tiny=True)
    assert [(tiny[n].labelled_cases, tiny[n].unlabelled_cases) for n in tiny] == [(5, 3), (5, 7), (0, 12)]
