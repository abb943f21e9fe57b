"""Fixtures shared by the deploy tests: the tiny PlainConvUNet results folder and two nnU-Net-named
cases (builders in tests/deploy/test_onnx.py). Module-scoped: each test module gets its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.test_onnx import tiny_plans, write_case, write_results_folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy_results")
    return write_results_folder(root, tiny_plans([4, 8, 16], [16, 16, 16]))


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cases")
    write_case(folder, "case_a", (20, 16, 24), seed=1)
    write_case(folder, "case_b", (16, 24, 18), seed=2)
    return folder
