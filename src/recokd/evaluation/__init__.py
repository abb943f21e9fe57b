"""Segmentation metrics and efficiency profiling."""
