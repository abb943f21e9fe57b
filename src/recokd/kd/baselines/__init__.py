"""Baseline KD methods of the comparison table (spec section 7), registered on import.

Registered names (see ``recokd methods`` for every option and default):

- ``logits``: Hinton logit KD on full-resolution logits (:class:`LogitKD`)
- ``fitnet``: 1x1x1 regressor + MSE (:class:`FitNet`)
- ``at``: attention transfer (:class:`AttentionTransfer`)
- ``cwd``: channel-wise distillation (:class:`ChannelWiseDistillation`)
- ``skd``: pair-wise structured KD on pooled cells (:class:`StructuredKD`)
- ``ifvd``: intra-class feature variation (:class:`IFVD`)
- ``cirkd``: memory-free cross-image relational KD (:class:`CrossImageRelationalKD`)
- ``rkd``: relational KD, distance + angle (:class:`RelationalKD`)
- ``dist``: DIST, Pearson-correlation relations of the logits (:class:`DISTKD`)

``recokd.kd.registry`` imports this package at its end, so importing either registers them.
"""

from __future__ import annotations

from recokd.kd.baselines.common import FeatureKD, pool_to_grid
from recokd.kd.baselines.dist import DISTKD
from recokd.kd.baselines.ifvd import IFVD
from recokd.kd.baselines.logits import LogitKD
from recokd.kd.baselines.pointwise import AttentionTransfer, ChannelWiseDistillation, FitNet
from recokd.kd.baselines.relational import CrossImageRelationalKD, RelationalKD, StructuredKD
from recokd.kd.registry import register_kd_method

__all__ = [
    "DISTKD",
    "IFVD",
    "AttentionTransfer",
    "ChannelWiseDistillation",
    "CrossImageRelationalKD",
    "FeatureKD",
    "FitNet",
    "LogitKD",
    "RelationalKD",
    "StructuredKD",
    "pool_to_grid",
]

#: registered name -> (class, one-line description); the class itself is the factory, so the
#: registry reads its keyword-only options and defaults from ``__init__``
BASELINES = {
    "logits": (LogitKD, "Logit KD (Hinton): T^2 KL(softmax(z_T/T) || softmax(z_S/T)), voxel mean"),
    "fitnet": (FitNet, "FitNet: 1x1x1 regressor on the student feature + MSE to the teacher feature"),
    "at": (AttentionTransfer, "Attention transfer: L2 distance of normalised maps mean_c F^2"),
    "cwd": (ChannelWiseDistillation, "CWD: per-channel softmax over voxels, T^2 KL(teacher || student) / C"),
    "skd": (StructuredKD, "SKD pair-wise: MSE of cosine-similarity matrices of pooled cells"),
    "ifvd": (IFVD, "IFVD: MSE of voxel-to-class-prototype cosine similarity maps"),
    "cirkd": (CrossImageRelationalKD, "CIRKD (memory-free): KL of cross-sample pooled-cell similarity rows"),
    "rkd": (RelationalKD, "RKD: distance (x25) + angle (x50) relations among pooled cells"),
    "dist": (DISTKD, "DIST: 1 - Pearson of softmax(z/tau), per voxel over classes + per class over voxels"),
}

for _name, (_cls, _description) in BASELINES.items():
    register_kd_method(_name, _description)(_cls)
