"""Backbone-agnostic knowledge-distillation core of reco-kd (depends on torch only)."""
