"""Causal language models: sources, the KV-cache decode step, weight quantization, the LM export path."""
