"""The supported nnU-Net range is declared once and enforced with one clear message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recokd.errors import UserError
from recokd.nnunet.versions import MIN_NNUNET, check_nnunet_version, installed_nnunet_version


def test_the_installed_version_is_supported() -> None:
    check_nnunet_version()
    assert installed_nnunet_version() is not None


@pytest.mark.parametrize("version", ["2.8.0", "2.8.1", "2.9", "3.0.0.dev1", "2.8.1+local"])
def test_supported_versions_pass(version: str) -> None:
    check_nnunet_version(version)


@pytest.mark.parametrize("version", ["2.7.0", "2.5.2", "2.0"])
def test_older_versions_get_one_clear_message(version: str) -> None:
    with pytest.raises(UserError) as e:
        check_nnunet_version(version)
    assert str(e.value) == (
        f"nnunetv2 {version} is installed, but reco-kd needs nnunetv2 >= 2.8.0 (nnU-Net finds the reco-kd "
        "trainers through nnUNet_extTrainer, new in 2.8): pip install -U 'nnunetv2>=2.8.0'"
    )


def test_pyproject_declares_the_same_lower_bound() -> None:
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    bound = re.search(r'"nnunetv2\s*>=\s*([\d.]+)', text).group(1)  # no tomllib on Python 3.10
    assert tuple(int(x) for x in bound.split(".")) + (0,) * (3 - len(bound.split("."))) == MIN_NNUNET
