"""Re-export for nnU-Net's trainer lookup via ``nnUNet_extTrainer`` (imported standalone by file)."""

from recokd.nnunet.trainer import nnUNetTrainerReCoKD

__all__ = ["nnUNetTrainerReCoKD"]
