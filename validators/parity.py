"""Parity metrics between the PyTorch original's outputs and an artifact's, on the same inputs."""

from __future__ import annotations

import numpy as np

SQNR_CAP_DB = 200.0  # identical outputs: report a finite figure (JSON has no infinity)


def is_classifier_output(reference: np.ndarray) -> bool:
    """N x C floating logits or probabilities with more than one class."""
    return reference.ndim == 2 and reference.shape[1] > 1 and reference.dtype.kind == "f"


def output_parity(reference: np.ndarray, artifact: np.ndarray) -> dict:
    if reference.shape != artifact.shape:
        raise ValueError(f"shape {artifact.shape} differs from the reference {reference.shape}")
    ref = reference.astype(np.float64).reshape(len(reference), -1) if reference.ndim else reference.astype(np.float64)
    out = artifact.astype(np.float64).reshape(ref.shape)
    diff = out - ref
    signal, noise = float(np.sum(ref * ref)), float(np.sum(diff * diff))
    if noise == 0.0:
        sqnr = SQNR_CAP_DB
    elif signal == 0.0:
        sqnr = -SQNR_CAP_DB
    else:
        sqnr = min(SQNR_CAP_DB, 10.0 * np.log10(signal / noise))
    norms = float(np.linalg.norm(ref) * np.linalg.norm(out))
    cosine = float(np.sum(ref * out) / norms) if norms > 0 else (1.0 if noise == 0.0 else 0.0)
    metrics = {
        "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "mean_abs": float(np.mean(np.abs(diff))) if diff.size else 0.0,
        "cosine": cosine,
        "sqnr_db": float(sqnr),
        "top1_agreement": None,
        "samples": int(len(reference)) if reference.ndim else 1,
    }
    if is_classifier_output(reference):
        metrics["top1_agreement"] = float(np.mean(reference.argmax(1) == artifact.argmax(1)))
    return metrics


def worst_case(per_output: dict[str, dict]) -> dict:
    """One parity figure per artifact: the worst of its outputs on every metric."""
    metrics = list(per_output.values())
    agreements = [m["top1_agreement"] for m in metrics if m["top1_agreement"] is not None]
    return {
        "max_abs": max(m["max_abs"] for m in metrics),
        "mean_abs": max(m["mean_abs"] for m in metrics),
        "cosine": min(m["cosine"] for m in metrics),
        "sqnr_db": min(m["sqnr_db"] for m in metrics),
        "top1_agreement": min(agreements) if agreements else None,
        "samples": metrics[0]["samples"],
    }


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


def accuracy(reference: dict[str, np.ndarray], artifact: dict[str, np.ndarray], labels: np.ndarray) -> dict | None:
    """Task top-1 on the first classifier-shaped output, for the original and the artifact."""
    for name, ref in reference.items():
        if is_classifier_output(ref) and len(ref) == len(labels):
            ref_acc, art_acc = top1_accuracy(ref, labels), top1_accuracy(artifact[name], labels)
            return {"metric": "top1", "output": name, "reference": ref_acc, "artifact": art_acc,
                    "drop": ref_acc - art_acc, "samples": int(len(labels))}
    return None
