"""Torch's CPU threads of a training or prediction: every core as nnU-Net's entry points, or
``RECOKD_CPU_THREADS`` (what ``bench --jobs N`` gives each run); a bad value refused in one line."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from recokd.errors import UserError
from recokd.nnunet.devices import cpu_threads, set_nnunet_threads


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_every_core_by_default(monkeypatch: pytest.MonkeyPatch, torch_threads) -> None:
    monkeypatch.delenv("RECOKD_CPU_THREADS", raising=False)
    torch.set_num_threads(1)
    set_nnunet_threads(torch.device("cpu"))
    assert cpu_threads() == multiprocessing.cpu_count() == torch.get_num_threads()


def test_the_environment_sets_the_threads(monkeypatch: pytest.MonkeyPatch, torch_threads) -> None:
    monkeypatch.setenv("RECOKD_CPU_THREADS", "1")
    set_nnunet_threads(torch.device("cpu"))
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RECOKD_CPU_THREADS", value)
    with pytest.raises(UserError, match=f"RECOKD_CPU_THREADS: expected a positive integer, got '{value}'"):
        cpu_threads()
