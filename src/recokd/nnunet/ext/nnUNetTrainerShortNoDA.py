"""Re-export for nnU-Net's trainer lookup via ``nnUNet_extTrainer`` (imported standalone by file)."""

from recokd.nnunet.short_trainer import nnUNetTrainerShortNoDA

__all__ = ["nnUNetTrainerShortNoDA"]
