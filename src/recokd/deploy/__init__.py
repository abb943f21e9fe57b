"""Export (ONNX) and CPU inference."""
