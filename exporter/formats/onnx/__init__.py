"""ONNX: torch.onnx export, typed graph passes, onnxruntime quantization, per-layer blame."""
