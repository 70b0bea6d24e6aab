"""Core ML: coremltools ML Programs, weight compression, per-layer blame with the MIL interpreter."""
