"""The nnU-Net versions reco-kd supports, and one clear message for the others.

The plug-in needs nnunetv2 >= 2.8.0: nnU-Net finds our trainer classes through the
``nnUNet_extTrainer`` environment variable, which 2.8 introduced (older versions only search
their own package, so ``nnUNetv2_train -tr nnUNetTrainerReCoKD`` and stock prediction of a
student cannot find the class), and our trainers follow the 2.7+ ``continue_training`` /
``build_network_architecture`` signatures. CI runs the nnU-Net end-to-end tests on the lowest
(2.8.0) and the highest (the newest on PyPI at release, 2.8.1) supported versions.
"""

from __future__ import annotations

import re
from importlib import metadata

from recokd.errors import UserError

#: the oldest nnunetv2 the plug-in works with (pyproject.toml says the same)
MIN_NNUNET = (2, 8, 0)


def _parse(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version.split("+")[0])[:3]
    return tuple(int(n) for n in numbers) + (0,) * (3 - len(numbers))


def installed_nnunet_version() -> str | None:
    """The installed nnunetv2 distribution's version, or None if it is not installed."""
    try:
        return metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        return None


def check_nnunet_version(version: str | None = None) -> None:
    """Raise :class:`UserError` unless nnunetv2 (``version``, default: the installed one) is supported."""
    found = installed_nnunet_version() if version is None else version
    need = ".".join(map(str, MIN_NNUNET))
    if found is None:
        raise UserError(f"nnunetv2 is not installed; reco-kd needs nnunetv2 >= {need}: pip install "
                        f"'nnunetv2>={need}'")
    if _parse(found) < MIN_NNUNET:
        raise UserError(
            f"nnunetv2 {found} is installed, but reco-kd needs nnunetv2 >= {need} (nnU-Net finds the "
            f"reco-kd trainers through nnUNet_extTrainer, new in 2.8): pip install -U 'nnunetv2>={need}'"
        )
