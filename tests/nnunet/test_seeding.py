"""Random-stream isolation helpers (recokd.nnunet.seeding): what the paired runs rest on."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from recokd.errors import UserError
from recokd.nnunet.seeding import SEED_ENV, isolated_rng, kd_module_seed, seed_everything, seed_from_env


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_isolated_block_does_not_shift_the_stream_after_it() -> None:
    seed_everything(3)
    expected = _draws()
    seed_everything(3)
    with isolated_rng():
        _draws()
        torch.nn.Linear(64, 64)  # e.g. a KD adapter's random initialisation
    assert _draws() == expected


def test_isolated_block_with_a_seed_is_reproducible_and_independent_of_the_outer_state() -> None:
    seed_everything(1)
    with isolated_rng(kd_module_seed(5)):
        a = torch.nn.Linear(8, 8).weight.detach().clone()
    seed_everything(2)
    _draws()
    with isolated_rng(kd_module_seed(5)):
        b = torch.nn.Linear(8, 8).weight.detach().clone()
    assert torch.equal(a, b)
    with isolated_rng(kd_module_seed(6)):
        c = torch.nn.Linear(8, 8).weight.detach().clone()
    assert not torch.equal(a, c)


def test_isolated_block_restores_the_state_when_it_raises() -> None:
    seed_everything(4)
    expected = _draws()
    seed_everything(4)
    with pytest.raises(RuntimeError), isolated_rng():
        _draws()
        raise RuntimeError("boom")
    assert _draws() == expected


def test_seed_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SEED_ENV, raising=False)
    assert seed_from_env() is None
    monkeypatch.setenv(SEED_ENV, " 12 ")
    assert seed_from_env() == 12
    for bad in ("-1", "x", "1.5"):
        monkeypatch.setenv(SEED_ENV, bad)
        with pytest.raises(UserError, match=f"{SEED_ENV} must be an integer >= 0"):
            seed_from_env()
