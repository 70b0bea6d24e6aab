"""Parity metrics between the PyTorch original's outputs and an artifact's, on the same inputs."""

from __future__ import annotations

import numpy as np

SQNR_CAP_DB = 200.0  # identical outputs: report a finite figure (JSON has no infinity)


# What each kind of output is judged by. The other figures are still measured and reported.
JUDGED_BY = {
    "classification": ("top1_agreement", "cosine", "sqnr_db", "max_abs"),  # logits or probabilities
    "embedding": ("cosine", "sqnr_db", "max_abs"),  # a vector compared by angle: its argmax means nothing
    "regression": ("sqnr_db", "max_abs"),  # values read one by one: their angle means nothing
    "tensor": ("cosine", "sqnr_db", "max_abs"),  # anything else (hidden states, feature maps, ...)
}
OUTPUT_KINDS = tuple(JUDGED_BY)


def _unit_rows(values: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.linalg.norm(values, axis=1) - 1.0) < 1e-3))


def infer_output_kind(reference: np.ndarray) -> tuple[str, str]:
    """(kind, why), inferred conservatively from the reference outputs; a user's --output-kind wins.
    Only an N x C float output can be a classification or an embedding; anything else is a tensor."""
    if reference.ndim != 2 or reference.dtype.kind != "f" or not len(reference) or reference.shape[1] < 2:
        return "tensor", "not an N x C float output"
    values = reference.astype(np.float64)
    in_unit_interval = bool(np.all(values >= 0) and np.all(values <= 1))
    sums_to_one = in_unit_interval and bool(np.all(np.abs(values.sum(axis=1) - 1.0) < 1e-3))
    if sums_to_one:
        return "classification", "rows are probabilities summing to 1"
    if _unit_rows(values):
        return "embedding", "rows have unit L2 norm"
    if in_unit_interval:
        return "classification", "N x C values in [0, 1] (per-class probabilities)"
    return "classification", "N x C values (logits); say --output-kind NAME:embedding if they are not"


def _class_rows(values: np.ndarray) -> np.ndarray:
    """Per-sample (or per-position) class scores: the last axis holds the classes."""
    return values.reshape(-1, values.shape[-1])


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


def output_parity(reference: np.ndarray, artifact: np.ndarray, min_sqnr_db: float | None = None,
                  kind: str | None = None) -> dict:
    """Parity of one output, judged as `kind` (inferred when None). An artifact output holding NaN or
    Inf has no error figures (None) and counts them in `nonfinite_values`. min_sqnr_db sets the noise a
    top-1 flip is excused by (else the measured noise does)."""
    if reference.shape != artifact.shape:
        raise ValueError(f"shape {artifact.shape} differs from the reference {reference.shape}")
    ref = reference.astype(np.float64).reshape(len(reference), -1) if reference.ndim else reference.astype(np.float64)
    out = artifact.astype(np.float64).reshape(ref.shape)
    nonfinite = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
    samples = int(len(reference)) if reference.ndim else 1
    kind = kind or infer_output_kind(reference)[0]
    judged = {"kind": kind, "judged_by": list(JUDGED_BY[kind])}
    if nonfinite:
        return {"max_abs": None, "mean_abs": None, "cosine": None, "sqnr_db": None, "top1_agreement": None,
                "samples": samples, **judged, "nonfinite_values": nonfinite}
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
        **judged,
    }
    if kind == "classification" and reference.ndim >= 2 and reference.shape[-1] > 1:
        noise_rms = allowed_noise_rms(reference, min_sqnr_db) if min_sqnr_db is not None \
            else float(np.sqrt(np.mean(diff * diff)))
        metrics |= top1_judgement(_class_rows(reference), _class_rows(artifact), noise_rms)
    return metrics


def _worst(metrics: list[dict], name: str, pick):
    """The worst of one metric over the outputs judged by it; None (not measurable) if one of them has
    none, or if no output is judged by it."""
    values = [m[name] for m in metrics if name in m["judged_by"] or name == "mean_abs"]  # mean_abs: shown only
    return None if not values or any(v is None for v in values) else pick(values)


def worst_case(per_output: dict[str, dict]) -> dict:
    """One parity figure per artifact: on every metric, the worst of the outputs its kind is judged by
    (an embedding has no top-1 figure, a regression output no cosine)."""
    metrics = list(per_output.values())
    judged = [m for m in metrics if m["top1_agreement"] is not None]
    worst_top1 = min(judged, key=lambda m: m["top1_agreement"]) if judged else None
    overall = {
        "max_abs": _worst(metrics, "max_abs", max),
        "mean_abs": _worst(metrics, "mean_abs", max),
        "cosine": _worst(metrics, "cosine", min),
        "sqnr_db": _worst(metrics, "sqnr_db", min),
        "top1_agreement": worst_top1["top1_agreement"] if worst_top1 else None,
        "samples": metrics[0]["samples"],
        "judged_by": sorted({name for m in metrics for name in m["judged_by"]}),
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


def first_classifier(reference: dict[str, np.ndarray], kinds: dict[str, str]) -> str | None:
    """The output task accuracy is measured on: the first N x C classification output."""
    return next((name for name, ref in reference.items()
                 if kinds.get(name) == "classification" and ref.ndim == 2 and ref.shape[1] > 1), None)


def accuracy(reference: dict[str, np.ndarray], artifact: dict[str, np.ndarray], labels: np.ndarray,
             kinds: dict[str, str]) -> dict | None:
    """Task top-1 on the first classification output, for the original and the artifact."""
    name = first_classifier(reference, kinds)
    if name is None or len(reference[name]) != len(labels):
        return None
    ref_hits, art_hits = (int(np.sum(logits[name].argmax(1) == labels)) for logits in (reference, artifact))
    # from counts, so one flip in 200 is a drop of exactly 0.005 (1.0 - 0.995 is 0.0050000000000000044)
    return {"metric": "top1", "output": name, "reference": ref_hits / len(labels), "artifact": art_hits / len(labels),
            "drop": (ref_hits - art_hits) / len(labels), "samples": int(len(labels))}
