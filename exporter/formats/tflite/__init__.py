"""TFLite (LiteRT): litert-torch conversion, ai-edge-quantizer / PT2E quantization, per-layer blame, vela."""
