"""reco-kd: Region- and Context-aware Knowledge Distillation for nnU-Net 3D segmentation.

Sub-packages:

- :mod:`recokd.kd`: backbone-agnostic core (torch only): feature taps, adapters, ReCo-KD losses,
  schedules, EMA, the :class:`~recokd.kd.distiller.Distiller`.
- :mod:`recokd.nnunet`: nnU-Net v2 integration (student plans, trainer, teacher loading).
- :mod:`recokd.data`: synthetic phantom datasets in nnU-Net raw format.
- :mod:`recokd.evaluation`, :mod:`recokd.deploy`: metrics, profiling, export.
"""

__version__ = "0.1.0"
