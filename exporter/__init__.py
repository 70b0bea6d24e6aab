"""edgeport exporter: load a model, trace it, run per-target passes, convert, write artifacts."""

__version__ = "0.1.0"
