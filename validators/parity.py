"""Parity metrics between the PyTorch original's outputs and an artifact's, on the same inputs."""

from __future__ import annotations

import numpy as np

SQNR_CAP_DB = 200.0  # identical outputs: report a finite figure (JSON has no infinity)


def is_embedding_output(reference: np.ndarray) -> bool:
    """N x D rows of unit L2 norm (a sentence or speaker embedding), its argmax meaningless; a row of
    probabilities (non-negative, summing to 1, unit norm when one-hot) is not one."""
    if reference.ndim != 2 or reference.dtype.kind != "f" or not len(reference):
        return False
    values = reference.astype(np.float64)
    unit = np.all(np.abs(np.linalg.norm(values, axis=1) - 1.0) < 1e-3)
    probabilities = np.all(values >= 0) and np.all(np.abs(values.sum(axis=1) - 1.0) < 1e-3)
    return bool(unit and not probabilities)


def is_classifier_output(reference: np.ndarray) -> bool:
    """N x C floating logits or probabilities with more than one class (and not an embedding)."""
    return (reference.ndim == 2 and reference.shape[1] > 1 and reference.dtype.kind == "f"
            and not is_embedding_output(reference))


def output_kind(reference: np.ndarray) -> str:
    """What the metrics judge an output as: top-1 applies to classification only."""
    return "classification" if is_classifier_output(reference) else \
        "embedding" if is_embedding_output(reference) else "values"


# A flip between the reference's top two classes is excused only when their margin is within what
# the budget's noise can bridge: the difference of two logits' errors, each of the RMS the SQNR
# bound allows, at three standard deviations.
FLIP_SIGMAS = 3.0 * np.sqrt(2.0)


def allowed_noise_rms(reference: np.ndarray, min_sqnr_db: float) -> float:
    """The per-element RMS error an output may have and still meet an SQNR bound."""
    return float(np.sqrt(np.mean(reference.astype(np.float64) ** 2)) * 10.0 ** (-min_sqnr_db / 20.0))


def top1_judgement(reference: np.ndarray, artifact: np.ndarray, noise_rms: float) -> dict:
    """Top-1 agreement on every sample, and on the decisive ones: samples whose reference top-2
    margin exceeds what noise of `noise_rms` per logit can flip (FLIP_SIGMAS)."""
    top2 = np.sort(reference.astype(np.float64), axis=1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    threshold = FLIP_SIGMAS * noise_rms
    decisive = margins > threshold
    agree = reference.argmax(1) == artifact.argmax(1)
    return {
        "top1_agreement": float(np.mean(agree[decisive])) if decisive.any() else None,
        "top1_agreement_all": float(np.mean(agree)),
        "top1_decisive_samples": int(decisive.sum()),
        "top1_margin_threshold": threshold,
    }


def sqnr_from_energies(signal: float, noise: float) -> float:
    """SQNR in dB from summed signal and noise energies, capped at ±SQNR_CAP_DB (identical outputs
    give the cap, a zero reference with any noise the negative cap)."""
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return min(SQNR_CAP_DB, 10.0 * float(np.log10(signal / noise)))


def output_parity(reference: np.ndarray, artifact: np.ndarray, min_sqnr_db: float | None = None) -> dict:
    """Parity of one output. An artifact output holding NaN or Inf has no error figures (None) and
    counts them in `nonfinite_values`. min_sqnr_db sets the noise a top-1 flip is excused by (else
    the measured noise does)."""
    if reference.shape != artifact.shape:
        raise ValueError(f"shape {artifact.shape} differs from the reference {reference.shape}")
    ref = reference.astype(np.float64).reshape(len(reference), -1) if reference.ndim else reference.astype(np.float64)
    out = artifact.astype(np.float64).reshape(ref.shape)
    nonfinite = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
    samples = int(len(reference)) if reference.ndim else 1
    kind = output_kind(reference)
    if nonfinite:
        return {"max_abs": None, "mean_abs": None, "cosine": None, "sqnr_db": None, "top1_agreement": None,
                "samples": samples, "kind": kind, "nonfinite_values": nonfinite}
    diff = out - ref
    signal, noise = float(np.sum(ref * ref)), float(np.sum(diff * diff))
    sqnr = sqnr_from_energies(signal, noise)
    norms = float(np.linalg.norm(ref) * np.linalg.norm(out))
    cosine = float(np.sum(ref * out) / norms) if norms > 0 else (1.0 if noise == 0.0 else 0.0)
    metrics = {
        "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "mean_abs": float(np.mean(np.abs(diff))) if diff.size else 0.0,
        "cosine": cosine,
        "sqnr_db": float(sqnr),
        "top1_agreement": None,
        "samples": samples,
        "kind": kind,
    }
    if kind == "classification":
        noise_rms = allowed_noise_rms(reference, min_sqnr_db) if min_sqnr_db is not None \
            else float(np.sqrt(np.mean(diff * diff)))
        metrics |= top1_judgement(reference, artifact, noise_rms)
    return metrics


def _worst(values: list, pick):
    """The worst of one metric over outputs; None (not measurable) if any output has none."""
    return None if any(v is None for v in values) else pick(values)


def worst_case(per_output: dict[str, dict]) -> dict:
    """One parity figure per artifact: the worst of its outputs on every metric."""
    metrics = list(per_output.values())
    judged = [m for m in metrics if m["top1_agreement"] is not None]
    worst_top1 = min(judged, key=lambda m: m["top1_agreement"]) if judged else None
    overall = {
        "max_abs": _worst([m["max_abs"] for m in metrics], max),
        "mean_abs": _worst([m["mean_abs"] for m in metrics], max),
        "cosine": _worst([m["cosine"] for m in metrics], min),
        "sqnr_db": _worst([m["sqnr_db"] for m in metrics], min),
        "top1_agreement": worst_top1["top1_agreement"] if worst_top1 else None,
        "samples": metrics[0]["samples"],
    }
    classified = [m for m in metrics if "top1_decisive_samples" in m]
    if classified:
        fewest = worst_top1 or min(classified, key=lambda m: m["top1_decisive_samples"])
        overall |= {k: fewest[k] for k in ("top1_agreement_all", "top1_decisive_samples", "top1_margin_threshold")}
    nonfinite = sum(m.get("nonfinite_values", 0) for m in metrics)
    if nonfinite:
        overall["nonfinite_values"] = nonfinite
    return overall


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
