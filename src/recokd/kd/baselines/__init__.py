"""Baseline KD methods of the comparison table (docs/method.md section 7); :mod:`recokd.kd.methods`
registers them under these names (see ``recokd methods`` for every option and default):

- ``logits``: Hinton logit KD on full-resolution logits (:class:`LogitKD`)
- ``fitnet``: 1x1x1 regressor + MSE (:class:`FitNet`)
- ``at``: attention transfer (:class:`AttentionTransfer`)
- ``cwd``: channel-wise distillation (:class:`ChannelWiseDistillation`)
- ``skd``: pair-wise structured KD on pooled cells (:class:`StructuredKD`)
- ``ifvd``: intra-class feature variation (:class:`IFVD`)
- ``cirkd``: memory-free cross-image relational KD (:class:`CrossImageRelationalKD`)
- ``rkd``: relational KD, distance + angle (:class:`RelationalKD`)
- ``dist``: DIST, Pearson-correlation relations of the logits (:class:`DISTKD`)
"""

from __future__ import annotations

from recokd.kd.baselines.common import pool_to_grid
from recokd.kd.baselines.dist import DISTKD
from recokd.kd.baselines.ifvd import IFVD
from recokd.kd.baselines.logits import LogitKD
from recokd.kd.baselines.pointwise import AttentionTransfer, ChannelWiseDistillation, FitNet
from recokd.kd.baselines.relational import CrossImageRelationalKD, RelationalKD, StructuredKD

__all__ = [
    "DISTKD",
    "IFVD",
    "AttentionTransfer",
    "ChannelWiseDistillation",
    "CrossImageRelationalKD",
    "FitNet",
    "LogitKD",
    "RelationalKD",
    "StructuredKD",
    "pool_to_grid",
]
