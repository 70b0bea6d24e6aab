"""Language models: the runtime with its KV cache, token-level metrics, the verdict, generate, the report."""
