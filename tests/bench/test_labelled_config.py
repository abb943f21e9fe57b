"""``recokd bench --labelled-cases`` and the reserved method ``pseudo``: parsing, the study's checks, the
refusals of the command line (no nnU-Net run needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recokd.bench.cli import build_study
from recokd.bench.config import (
    CONFIG_FILE,
    NOKD,
    PSEUDO,
    TEACHER,
    RunSpec,
    Selection,
    Study,
    check_or_write_config,
    check_selection,
    parse_methods,
    plan_runs,
)
from recokd.cli import build_parser, main
from recokd.errors import UserError
from tests.bench.test_cli import TINY


def _study(**kw: object) -> Study:
    return Study(dataset="Dataset991_BenchPhantoms", phantoms={"cases": 12}, **kw)  # type: ignore[arg-type]


def test_pseudo_is_a_reserved_method_that_is_no_kd_run() -> None:
    assert parse_methods("reco,pseudo,nokd", ["reco", "at"]) == ["reco", PSEUDO]
    selection = Selection(["reco", PSEUDO, "at"], [2], [0, 1])
    assert selection.kd_methods == ["reco", "at"]
    runs = plan_runs(selection)
    assert runs[0] == RunSpec(TEACHER, None, None)
    assert runs[1:5] == [RunSpec(m, 2, 0) for m in (NOKD, "reco", PSEUDO, "at")]
    assert RunSpec(PSEUDO, 2, 1).key == "t2/pseudo/seed1"
    with pytest.raises(UserError, match="'pseudo' needs --labelled-cases"):
        parse_methods("pseudo,psuedo", ["reco"])


def test_pseudo_needs_labelled_cases() -> None:
    selection = Selection([PSEUDO], [2], [0])
    with pytest.raises(UserError) as e:
        check_selection(_study(), selection)
    assert "--methods pseudo" in str(e.value) and "--labelled-cases K" in str(e.value)
    assert "\n" not in str(e.value)
    check_selection(_study(labelled_cases=6, unlabelled_share=0.5), selection)
    check_selection(_study(), Selection(["reco"], [2], [0]))  # without pseudo nothing is needed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labelled_cases": 4, "unlabelled_share": 0.5}, "--labelled-cases must be >= 5"),
        ({"labelled_cases": 6, "unlabelled_share": 0.5, "fold": "all"}, "needs a numbered fold"),
        ({"labelled_cases": 6, "unlabelled_share": 1.0}, r"--unlabelled-share must be in \(0, 1\)"),
        ({"labelled_cases": 6, "unlabelled_share": 0.0}, r"--unlabelled-share must be in \(0, 1\)"),
        ({"unlabelled_share": 0.3}, "--unlabelled-share applies with --labelled-cases K only"),
    ],
)
def test_study_checks_the_labelled_split(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        _study(**options).validate()


def test_the_split_is_part_of_the_study(tmp_path: Path) -> None:
    """A bench written before --labelled-cases resumes (every case labelled); another split is refused."""
    out = tmp_path / "bench"
    assert check_or_write_config(out, _study(), Selection(["reco"], [2], [0])) is False
    saved = json.loads((out / CONFIG_FILE).read_text())
    for key in ("labelled_cases", "unlabelled_share"):  # an older bench_config.json lacks these
        del saved["study"][key]
    (out / CONFIG_FILE).write_text(json.dumps(saved))
    assert check_or_write_config(out, _study(), Selection(["reco"], [2], [1])) is True
    with pytest.raises(UserError, match="labelled_cases: saved None, now 6"):
        check_or_write_config(
            out, _study(labelled_cases=6, unlabelled_share=0.5), Selection(["reco"], [2], [0])
        )


def _args(*extra: str) -> object:
    return build_parser().parse_args(["bench", *TINY, "-o", "/nonexistent/b", *extra])


def test_command_line_builds_the_split() -> None:
    study = build_study(_args("--labelled-cases", "5"))
    assert (study.labelled_cases, study.unlabelled_share) == (5, 0.5)  # recokd train's default share
    study = build_study(_args("--labelled-cases", "5", "--unlabelled-share", "0.25"))
    assert (study.labelled_cases, study.unlabelled_share) == (5, 0.25)
    study = build_study(_args())
    assert (study.labelled_cases, study.unlabelled_share) == (None, None)


def test_command_line_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["-o", str(tmp_path / "b")]

    def err(*extra: str) -> str:
        assert main(["bench", *TINY, *out, *extra]) == 2
        text = capsys.readouterr().err
        assert len(text.strip().splitlines()) == 1, text
        return text

    assert "--methods pseudo" in err("--methods", "reco,pseudo") and "--labelled-cases K" in err(
        "--methods", "pseudo"
    )
    assert "--unlabelled-share applies with --labelled-cases" in err("--unlabelled-share", "0.3")
    # TINY has 6 phantom training cases: 6 labelled would leave none unlabelled
    assert "the phantoms have 6 training cases" in err("--labelled-cases", "6")
    assert "--labelled-cases must be >= 5" in err("--labelled-cases", "3")
    assert "needs a numbered fold" in err("--labelled-cases", "5", "-f", "all")
    assert not (tmp_path / "b").exists()


def test_help_explains_both(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # argparse wraps at hyphens
    assert "--labelled-cases K" in text and "--unlabelled-share F" in text
    assert "'pseudo' adds the pseudo-label student" in text and "needs --labelled-cases" in text
    assert "the teacher still trains on every case" in text
