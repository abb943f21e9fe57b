"""nnU-Net v2 integration: student plans, teacher loading, the ReCo-KD trainer and CLI glue."""
