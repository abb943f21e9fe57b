"""Backbone-agnostic knowledge-distillation core of reco-kd (depends on torch only).

Importing the package registers every KD method (:mod:`recokd.kd.methods`) with
:mod:`recokd.kd.registry`, which itself imports none.
"""

import recokd.kd.methods  # noqa: F401  (registers the methods)
