"""Backbone-agnostic knowledge-distillation core of reco-kd (depends on torch only).

The KD methods are registered in :mod:`recokd.kd.methods`, which :mod:`recokd.kd.registry` loads on
its first query.
"""
