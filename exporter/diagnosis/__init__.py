"""Diagnosis: per-layer blame and automatic mixed precision, a stage of its own after emit."""
