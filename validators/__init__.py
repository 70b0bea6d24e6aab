"""Runtimes that execute each artifact, parity metrics, latency, budgets, reports.

Reads artifact directories (manifest.json, reference.npz, artifacts); never imports the exporter."""
