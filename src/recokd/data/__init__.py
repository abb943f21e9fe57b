"""Synthetic datasets written in nnU-Net raw format."""
