"""Trainer classes for nnU-Net's ``nnUNet_extTrainer`` search path (:func:`recokd.nnunet.ext_trainer_dir`).

nnU-Net imports every module of this folder *by file*, as a top-level module named after the
file, to find a trainer class by name (``nnunetv2.utilities.find_objects``). Each module here
therefore only re-exports a class from the ``recokd`` package and must stay importable on its
own. Keep nothing else in this folder.
"""
