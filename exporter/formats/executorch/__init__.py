"""ExecuTorch (.pte): the traced program lowered with the XNNPACK partitioner, run by the ExecuTorch runtime."""
