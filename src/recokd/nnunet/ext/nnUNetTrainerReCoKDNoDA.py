"""Re-export for nnU-Net's trainer lookup via ``nnUNet_extTrainer`` (imported standalone by file)."""

from recokd.nnunet.trainer import nnUNetTrainerReCoKDNoDA

__all__ = ["nnUNetTrainerReCoKDNoDA"]
