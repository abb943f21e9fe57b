"""Every KD method of the package, registered in one place (``recokd methods`` lists them).

``reco`` and its ablations are :class:`~recokd.kd.reco.ReCoKD` with component coefficients set to
0 (docs/method.md section 5); the baselines are the comparison table's (docs/method.md section 7).
Each class is its own factory: the registry reads its keyword-only options and defaults.
"""

from __future__ import annotations

from recokd.kd.baselines import (
    DISTKD,
    IFVD,
    AttentionTransfer,
    ChannelWiseDistillation,
    CrossImageRelationalKD,
    FitNet,
    LogitKD,
    RelationalKD,
    StructuredKD,
)
from recokd.kd.reco import ReCoKD
from recokd.kd.registry import register_kd_method

#: registered name -> (factory, one-line description, default options overriding the factory's)
METHODS = {
    "reco": (ReCoKD, "ReCo-KD: MS-SARD (class-aware region distillation) + MS-CA (context alignment)", {}),
    "reco-sard": (ReCoKD, "ReCo-KD ablation: MS-SARD only (no context term)", {"ctx": 0.0}),
    "reco-ca": (ReCoKD, "ReCo-KD ablation: MS-CA only (no region terms)", {"fg": 0.0, "bg": 0.0, "att": 0.0}),
    "reco-affinity": (ReCoKD, "ReCo-KD with the voxel-affinity context variant", {"context": "affinity"}),
    "logits": (LogitKD, "Logit KD (Hinton): T^2 KL(softmax(z_T/T) || softmax(z_S/T)), voxel mean", {}),
    "fitnet": (FitNet, "FitNet: 1x1x1 regressor on the student feature + MSE to the teacher feature", {}),
    "at": (AttentionTransfer, "Attention transfer: L2 distance of normalised maps mean_c F^2", {}),
    "cwd": (
        ChannelWiseDistillation, "CWD: per-channel softmax over voxels, T^2 KL(teacher || student) / C", {}
    ),
    "skd": (StructuredKD, "SKD pair-wise: MSE of cosine-similarity matrices of pooled cells", {}),
    "ifvd": (IFVD, "IFVD: MSE of voxel-to-class-prototype cosine similarity maps", {}),
    "cirkd": (
        CrossImageRelationalKD, "CIRKD (memory-free): KL of cross-sample pooled-cell similarity rows", {}
    ),
    "rkd": (RelationalKD, "RKD: distance (x25) + angle (x50) relations among pooled cells", {}),
    "dist": (
        DISTKD, "DIST: 1 - Pearson of softmax(z/tau), per voxel over classes + per class over voxels", {}
    ),
}

for _name, (_factory, _description, _defaults) in METHODS.items():
    register_kd_method(_name, _description, **_defaults)(_factory)
