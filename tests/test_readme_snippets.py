"""The README's Python example ("Using the losses with any PyTorch 3D network") runs as written on two
nnU-Net U-Nets of different widths, and the loss it builds trains the student (finite, with gradients)."""

from __future__ import annotations

import shlex

import pytest
import torch
from torch import nn

from tests.doc_blocks import ROOT, code_blocks


def _unet(widths: list[int], num_classes: int) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(
        input_channels=1, n_stages=4, features_per_stage=widths, conv_op=nn.Conv3d, kernel_sizes=3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=2, num_classes=num_classes,
        n_conv_per_stage_decoder=2, conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )


def test_readme_python_example_runs_and_trains_the_student() -> None:
    (snippet,) = code_blocks("README.md", "## Using the losses with any PyTorch 3D network", "python")
    torch.manual_seed(0)
    teacher, student = _unet([16, 32, 64, 128], 4), _unet([4, 8, 16, 32], 4)
    x = torch.randn(2, 1, 32, 32, 32)
    target = torch.randint(0, 4, (2, 1, 32, 32, 32))
    target[1] = 0  # one case without foreground
    ce = nn.CrossEntropyLoss()
    namespace = {"torch": torch, "teacher": teacher, "student": student, "x": x, "target": target,
                 "seg_loss": lambda out, t: ce(out, t[:, 0]), "epoch": 900}
    exec(compile(snippet, "README.md (python example)", "exec"), namespace)

    loss, kd_out, lam = namespace["loss"], namespace["kd_out"], namespace["lam"]
    assert torch.isfinite(loss) and loss.requires_grad
    assert kd_out["loss"].requires_grad and float(kd_out["loss"].detach()) > 0
    assert {"fg/0", "bg/0", "att/0", "ctx/0"} <= set(kd_out), sorted(kd_out)
    assert lam(900) == 0.01 and 0 < lam(300) < 0.01  # the linear ramp over the first 60% of 1000 epochs
    loss.backward()
    # every parameter the forward uses gets a finite gradient (without deep supervision, the decoder's
    # lower-resolution segmentation heads are unused)
    used = {n: p for n, p in student.named_parameters() if not n.startswith("decoder.seg_layers.")
            or n.startswith(f"decoder.seg_layers.{len(student.decoder.seg_layers) - 1}.")}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in used.values()), \
        [n for n, p in used.items() if p.grad is None]
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen
    namespace["optimizer"].step()


def _recokd_lines(heading: str) -> list[list[str]]:
    lines = "".join(code_blocks("README.md", heading, "bash")).replace("\\\n", " ").splitlines()
    commands = [shlex.split(line, comments=True) for line in lines if line.startswith("recokd ")]
    assert commands
    return commands


def test_readme_unlabelled_scans_commands_parse_with_the_real_parser() -> None:
    """Every ``recokd`` line of "Distil on your own unlabelled scans" is a valid command line (flags exist
    and take the values shown); tests/nnunet/test_unlabelled.py and test_pseudo_label*.py run them."""
    from recokd.cli import build_parser

    commands = {argv[1] for argv in _recokd_lines("## Distil on your own unlabelled scans")}
    assert commands == {"train", "distil", "pseudo-label"}
    for argv in _recokd_lines("## Distil on your own unlabelled scans"):
        args = build_parser().parse_args(argv[1:])
        if args.command == "train":
            assert args.unlabelled and args.teacher_folds
    for argv in _recokd_lines("### Pseudo-labels: recokd pseudo-label"):
        args = build_parser().parse_args(argv[1:])
        assert args.command == "pseudo-label" and args.func.__module__ == "recokd.nnunet.pseudo_label_cli"
        assert args.scans and args.dataset.startswith("Dataset")


def test_readme_bench_commands_parse_with_the_real_parser() -> None:
    """Every ``recokd`` line of "Benchmarking methods: recokd bench" is a valid command line, the
    pseudo-label one included (tests/bench/test_e2e_labelled.py runs such a bench)."""
    from recokd.bench.cli import build_selection, build_study
    from recokd.cli import build_parser

    commands = _recokd_lines("## Benchmarking methods: recokd bench")
    assert {argv[1] for argv in commands} == {"bench"}
    labelled = [build_parser().parse_args(argv[1:]) for argv in commands if "--labelled-cases" in argv]
    assert len(labelled) == 2
    study, selection = build_study(labelled[0]), build_selection(labelled[0])
    assert study.labelled_cases == 12 and "pseudo" in selection.methods
    more = labelled[1]  # its scans folder is the reader's (tests/bench/test_unlabelled_pool.py builds such)
    assert (more.unlabelled_images, more.unlabelled_cases, more.pseudo_label_loss) == (
        "more_scans/", 100, True)


def test_readme_study_commands_run_as_dry_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``recokd study`` line of "Studies" (the ``eval "$(...)"`` one included) runs from the clone's
    root as written, with ``--dry-run`` added where it is not ``--list``/``--env``: the files, steps and
    ``--set`` variables it names exist."""
    from recokd.cli import main

    monkeypatch.chdir(ROOT)
    text = "".join(code_blocks("README.md", "## Studies", "bash")).replace('eval "$(', "").replace(')"', "")
    lines = [shlex.split(line, comments=True) for line in text.splitlines()]
    commands = [argv for argv in lines if argv[:2] == ["recokd", "study"]]
    assert len(commands) >= 6
    for argv in commands:
        extra = [] if {"--list", "--env", "--dry-run"} & set(argv) else ["--dry-run"]
        assert main([*argv[1:], *extra]) == 0, argv
