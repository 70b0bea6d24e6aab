"""Token-level parity metrics, with llama.cpp's perplexity tool's definitions (`perplexity --kl-divergence`):

- perplexity: exp of the mean negative log-likelihood of each next token of the eval windows;
- KL divergence: KL(P_reference || Q_artifact) of the next-token distributions, per position; mean and p99;
- same top-1: share of positions where both give the same most likely next token.

Free-running: both generate greedily from the same prompt; the first position where the tokens differ,
the largest |logit difference| before it, and the share of repeated 3-grams (a model caught in a loop).
Forced decoding: the reference's greedy text fed to the artifact one token per decode call; the share of its
positions where the artifact's next token is the reference's, and the mean KL there. One near-tie lets two
greedy texts part for good; this still counts each later position, so text that is wrong from some point on
(a broken decode path, a cache read at the wrong positions) is told from text that parted at one close call.
Near ties: an artifact's greedy text that parts from the reference's where the float model ranks the
artifact's token within TIE_MARGIN logits of its own choice, and every later token likewise, is the float model's
own text on that path; the export stores it (a "tie path") and its repetition is compared with that text, so a
loop the float model itself falls into there is not charged to the artifact (SmolLM2-135M, int8: ties of 0.12 and
0.01 logits lead both to the same loop).
"""

from __future__ import annotations

import numpy as np

REPEAT_N = 3
# a long-context drift: DRIFT_ROWS judged positions in a row whose mean KL is DRIFT_FACTOR times the short windows'
# (a mean over 16 positions moves by up to 4x with the text: demo:tinylm's .pte a8w4) and above DRIFT_FLOOR
# (fp32's KL is ~1e-9)
DRIFT_ROWS, DRIFT_FACTOR, DRIFT_FLOOR = 16, 10.0, 0.01
CHUNK_ROWS = 32  # positions per step of teacher_forced's float64 arithmetic
TIE_MARGIN = 0.25  # logits: a greedy choice this close flips under any quantization (int8 SmolLM2: KL 3e-4 does)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def teacher_forced(reference_logprobs: np.ndarray, artifact_logits: np.ndarray, targets: np.ndarray,
                   reference_target_logprobs: np.ndarray | None = None, positions: np.ndarray | None = None) -> dict:
    """reference_logprobs, artifact_logits: [positions, vocab]; targets: [positions] (the true next tokens);
    reference_target_logprobs: the reference's exact log-probability of each target (perplexity), when stored;
    positions: each row's position in its window, to return KL per position ("kl_by_position": [[p, KL], ...])."""
    kl, reference_nll, artifact_nll, agree = (np.empty(len(targets)) for _ in range(4))
    for start in range(0, len(targets), CHUNK_ROWS):  # float64 rows of a 262k vocabulary are 2 MB each
        part = slice(start, start + CHUNK_ROWS)
        p_log = reference_logprobs[part].astype(np.float64)
        p_log -= np.log(np.exp(p_log).sum(axis=-1, keepdims=True))  # stored as float16: renormalise
        q_log = log_softmax(artifact_logits[part])
        rows, chosen = np.arange(len(p_log)), targets[part]
        reference_nll[part] = -(p_log[rows, chosen] if reference_target_logprobs is None
                                else reference_target_logprobs[part].astype(np.float64))
        artifact_nll[part] = -q_log[rows, chosen]
        kl[part] = np.maximum((np.exp(p_log) * (p_log - q_log)).sum(axis=-1), 0.0)
        # the artifact's choice is one the reference ranks first at the precision it is stored in (float16: two
        # tokens whose log-probabilities round alike are tied there, and argmax would pick one of them at random)
        agree[part] = p_log[rows, q_log.argmax(-1)] == p_log.max(-1)
    reference_ppl, artifact_ppl = float(np.exp(reference_nll.mean())), float(np.exp(artifact_nll.mean()))
    figures = {
        "positions": int(len(targets)),
        "reference_ppl": reference_ppl, "artifact_ppl": artifact_ppl, "ppl_ratio": artifact_ppl / reference_ppl,
        "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)), "kl_max": float(kl.max()),
        "top1_agreement": float(agree.mean()),
    }
    if positions is not None:
        figures["kl_by_position"] = [[int(p), round(float(k), 6)] for p, k in zip(positions, kl, strict=True)]
    return figures


def drift_onset(kl_by_position: list[list[float]], baseline: float, limit: float | None = None,
                rows: int = DRIFT_ROWS) -> dict | None:
    """The first run of `rows` consecutive judged positions whose mean KL exceeds DRIFT_FACTOR times baseline (the
    short windows' mean KL), DRIFT_FLOOR and the budget's KL limit: where an artifact starts to go wrong with
    position ({first, last, kl_mean, kl_before}); None when no run does."""
    kl = np.array([k for _, k in kl_by_position])
    threshold = max(DRIFT_FACTOR * baseline, DRIFT_FLOOR, limit or 0.0)
    for start in range(0, len(kl), rows):
        run = kl[start:start + rows]
        if run.mean() > threshold:
            return {"first": int(kl_by_position[start][0]), "last": int(kl_by_position[start + len(run) - 1][0]),
                    "kl_mean": float(run.mean()), "kl_before": float(kl[:start].mean()) if start else None}
    return None


def drift_text(drift: dict) -> str:
    """drift_onset's finding in words, as the verdict and the report say it."""
    before = f" (before: {drift['kl_before']:.3g})" if drift["kl_before"] is not None else ""
    return (f"KL drifts from position {drift['first']} (mean {drift['kl_mean']:.3g} over positions "
            f"{drift['first']}-{drift['last']}{before})")


def repeated_ngram_rate(tokens: list[int], n: int = REPEAT_N) -> float:
    """Share of the n-grams of tokens that already occurred earlier in tokens."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


def first_difference(first: list[int], second: list[int]) -> int:
    """The first position where two token lists differ; the shorter one's length where one begins the other."""
    return next((i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
                min(len(first), len(second)))


def free_running(reference_tokens: list[int], reference_logits: np.ndarray, artifact_tokens: list[int],
                 artifact_logits: np.ndarray, tie_paths: list[list[int]] = ()) -> dict:
    """Greedy generations from one prompt compared: logits are the ones each token was chosen from;
    tie_paths: the float model's own texts that part from the reference's at near ties."""
    count = min(len(reference_tokens), len(artifact_tokens))
    diverged = first_difference(reference_tokens, artifact_tokens)
    # up to and including the first differing position both were fed the same tokens, so their logits compare
    compared = min(diverged + 1, count)
    delta = np.abs(reference_logits[:compared].astype(np.float64) - artifact_logits[:compared]).max() if compared \
        else 0.0
    return {"tokens": count, "matching_tokens": diverged, "first_divergence": None if diverged == count else diverged,
            "max_abs_logit_delta": float(delta), **repetition(reference_tokens, artifact_tokens, tie_paths)}


def repetition(reference_tokens: list[int], artifact_tokens: list[int], tie_paths: list[list[int]] = ()) -> dict:
    """The artifact's repeated 3-gram rate against the reference's, or against the float model's own text on the
    path the artifact took where it parted from the reference at a near tie (the tie path most like its text)."""
    count = min(len(reference_tokens), len(artifact_tokens))
    diverged = first_difference(reference_tokens, artifact_tokens)
    parted = [p for p in tie_paths if diverged < count and p[:diverged + 1] == artifact_tokens[:diverged + 1]]
    path = max(parted, key=lambda p: next((i for i, (a, b) in enumerate(zip(p, artifact_tokens, strict=False))
                                           if a != b), count), default=None)
    reference_rate = repeated_ngram_rate(reference_tokens if path is None else path)
    artifact_rate = repeated_ngram_rate(artifact_tokens)
    return {"reference_repetition": reference_rate, "artifact_repetition": artifact_rate,
            "repetition_increase": artifact_rate - reference_rate, "parted_at_tie": path is not None}


def forced_decoding(reference_tokens: list[int], reference_logits: np.ndarray, artifact_logits: np.ndarray) -> dict:
    """artifact_logits [tokens, vocab]: the artifact's logits before each reference token, fed the reference's
    text (CachedLM.forced); reference_logits: the reference's at the same positions."""
    p_log, q_log = log_softmax(reference_logits), log_softmax(artifact_logits)
    kl = np.maximum((np.exp(p_log) * (p_log - q_log)).sum(axis=-1), 0.0)
    agree = q_log.argmax(-1) == np.asarray(reference_tokens)
    return {"decode_top1_agreement": float(agree.mean()), "decode_kl_mean": float(kl.mean()),
            "decode_first_miss": None if agree.all() else int(np.argmin(agree))}
