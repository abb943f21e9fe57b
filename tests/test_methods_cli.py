"""The ``recokd methods`` command lists every registered KD method with its options."""

from __future__ import annotations

import json

import pytest

from recokd.cli import main
from recokd.kd.registry import available_methods

BASELINES = ("logits", "fitnet", "at", "cwd", "skd", "ifvd", "cirkd", "rkd")


def test_methods_lists_every_method_with_description_and_defaults(capsys: pytest.CaptureFixture) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    methods = available_methods()
    assert set(BASELINES) | {"reco"} <= set(methods)
    for name, info in methods.items():
        header = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
        assert info.description in lines[header]
        block = " ".join(lines[header + 1 : header + 5])
        for option, default in info.options().items():
            assert f"{option}={json.dumps(default)}" in block, (name, option)
    logits = lines[next(i for i, line in enumerate(lines) if line.startswith("logits "))]
    assert "Hinton" in logits
    assert "temperature=2.0" in out and 'pool="max"' in out and "angle_weight=50.0" in out
    assert "reco+logits:0.5" in out  # how to combine


def test_methods_json_is_machine_readable(capsys: pytest.CaptureFixture) -> None:
    assert main(["methods", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    methods = available_methods()
    assert list(table) == list(methods)  # registration order
    for name, info in methods.items():
        assert table[name]["description"] == info.description
        assert table[name]["options"] == info.options()
    assert table["cwd"]["options"]["temperature"] == 4.0
    assert table["rkd"]["options"] == {
        "distance_weight": 25.0, "angle_weight": 50.0, "grid": 4, "pool": "avg", "across_batch": False,
        "alpha": 0.4, "level_weights": None,
    }


def test_methods_appears_in_the_top_level_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "methods" in capsys.readouterr().out


def test_methods_into_a_closed_pipe_stops_without_a_traceback() -> None:
    """``recokd methods | head -1``: the reader is gone before the listing is written; the command ends
    with exit code 1 and nothing on stderr (no BrokenPipeError traceback, no 'Exception ignored')."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from recokd.cli import main; sys.exit(main(['methods']))"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the child has imported anything, let alone written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err.decode()
    assert err.decode().strip() == ""
