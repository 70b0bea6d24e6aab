"""The causal-LM kind's export: source -> reference (PyTorch, teacher-forced and free-running) (prepared), then
one traced decode step with a fixed-length KV cache -> a variant per precision (edgeport's export, or
onnxruntime-genai's builder) -> blame and auto precision (written); exporter/pipeline.py writes the manifest and
runs the token-level validation (validators/judges/causal_lm.py) and the report.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.artifact_dir import REPRODUCIBLE
from common.files import save_npz, sha256_file, size_bytes
from exporter import memory
from exporter.artifacts import provenance
from exporter.diagnosis.search import fewest_kept
from exporter.errors import UserInputError
from exporter.formats import backend as format_backend
from exporter.kinds import Written
from exporter.lm.backend import HEAD, linear_modules
from exporter.lm.source import CausalLM, causal_lm_from_module, is_causal_lm_spec, load_causal_lm
from exporter.options import Progress
from exporter.quant.plan import METHODS, Planner, source_bits, weight_scheme
from exporter.quant.recover import RecoveredPlanner
from targets.lm import LmTarget, LmVariant
from validators.lm.metrics import TIE_MARGIN
from validators.lm.validate import REFERENCE, TOKENIZER_DIR, judge, tie_paths, verdict

LIBRARIES = ("transformers", "tokenizers", "gguf", "torchao", "onnxruntime-genai")  # beside each format's own
BLAME_ROWS_KEPT = 20  # the manifest keeps the worst rows; the count of all is recorded beside them
DECODE_TAIL = 64  # the long window's last positions, each fed by one decode call (the cache's end, as decoding reads)
LONG_ROWS = 256  # positions of the long window the reference stores distributions for (float16, vocabulary wide)


def _lm_backend(fmt: str) -> Any:
    """The format's language-model backend (exporter/lm/backend.py's LmBackend)."""
    return format_backend(fmt, LmTarget.kind)


def load_lm(options: Any, progress: Progress) -> CausalLM:
    spec = options.model
    if not isinstance(spec, str):
        return causal_lm_from_module(spec, options.example_inputs, f"python:{type(spec).__name__}",
                                     options.name or type(spec).__name__.lower())
    progress(f"[1/5] loading {spec} (a causal language model)")
    if is_causal_lm_spec(spec):
        lm = load_causal_lm(spec, trust_pickle=options.trust_pickle)
    elif ":" in spec and not spec.startswith("demo:"):
        from exporter.sources import import_factory

        target, _, attr = spec.rpartition(":")
        try:
            result = import_factory(target, attr, spec)()
        except UserInputError:
            raise
        except Exception as exc:  # the user's code
            raise UserInputError(f"{spec}: the factory raised {type(exc).__name__}: {exc}; fix the factory") from exc
        model, tokenizer = result if isinstance(result, tuple) else \
            (result, getattr(result, "edgeport_tokenizer", None))
        lm = causal_lm_from_module(model, tokenizer, spec, Path(target).stem if target.endswith(".py") else attr)
    else:
        raise UserInputError(f"--model {spec!r} is not a language-model source; use a Hugging Face folder, a .gguf "
                             "file, demo:tinylm or file.py:factory returning (model, tokenizer)")
    if options.name:
        lm.name = options.name
    return lm


def _refuse_unsupported_attention(lm: CausalLM, target: LmTarget) -> None:
    """Every format's attention checked against the model's before anything is converted."""
    from exporter.lm.attention import refuse_unsupported_attention

    for fmt in target.formats:
        backend = _lm_backend(fmt)
        refuse_unsupported_attention(lm.model, fmt, target.lm.cache_length, windows=backend.computes_windows,
                                     softcap=backend.computes_softcap)


def _prompts(lm: CausalLM, target: LmTarget) -> list[list[int]]:
    settings = target.lm
    encoded = []
    for index, prompt in enumerate(settings.prompts or lm.prompts):
        ids = lm.encode_prompt(prompt)
        if len(ids) + settings.new_tokens > settings.cache_length:
            raise UserInputError(f"prompt {index} is {len(ids)} tokens; with {settings.new_tokens} new tokens it does "
                                 f"not fit the {settings.cache_length}-token cache: shorten it or raise "
                                 "cache_length in the target's [lm] table")
        encoded.append(ids)
    return encoded


def _eval_windows(lm: CausalLM, target: LmTarget,
                  eval_path: Path | None) -> tuple[np.ndarray, dict[str, np.ndarray], dict, str]:
    settings = target.lm
    if eval_path is not None:
        text = _read_text(eval_path, "--eval")
        described = {"source": str(eval_path), "synthetic": False}
    else:
        text = lm.eval_text
        described = {"source": "held-out docstrings of Python's standard library (exporter/lm/corpus.py)",
                     "synthetic": False}
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = _bos_of_text(lm.tokenizer)
    length, wanted = settings.window_length, settings.eval_windows
    body = length - len(bos)  # text tokens per window
    count = min(wanted, len(ids) // body)
    if count == 0:
        raise UserInputError(f"the eval text has {len(ids)} tokens, fewer than one {length}-token window; "
                             "pass a longer --eval text")
    windows = np.array([bos + ids[i * body:(i + 1) * body] for i in range(count)], dtype=np.int64)
    rule = (f"every window starts with BOS (token {bos[0]}), as the tokenizer encodes text" if bos else
            "no BOS: the tokenizer adds none to text")
    described |= {"sha256": _text_sha(text), "windows": count, "window_length": length,
                  "positions": count * (length - 1), "bos": rule}
    long, described["long_context"] = _long_window(ids, bos, settings)
    return windows, long, described, text


def _long_window(ids: list[int], bos: list[int], settings: Any) -> tuple[dict[str, np.ndarray], dict]:
    """One window as long as the KV cache, from the start of the eval text: fed to an artifact as a device feeds a
    long prompt (prefill in chunks) and then decoded to the cache's last position, it reads every cache position
    and crosses every prefill boundary the short windows never reach. Judged at up to LONG_ROWS positions: the
    last ones densely, each fed by a decode call (the end of the cache), the ones before at a stride.
    Returns the reference's long/* arrays ({} when the text is too short) and the manifest's description."""
    length = settings.cache_length
    if len(bos) + len(ids) < length:
        return {}, {"checked": False, "why": f"the eval text has {len(ids)} tokens, fewer than the {length}-token "
                                             "cache: pass a longer --eval text to check long context"}
    tail = min(DECODE_TAIL, length // 4)
    decode_from = length - 1 - tail  # position p predicts token p + 1; the last judged position is length - 2
    stride = max(1, -(-decode_from // (LONG_ROWS - tail)))
    positions = np.concatenate([np.arange(0, decode_from, stride), np.arange(decode_from, length - 1)])
    arrays = {"long/tokens": np.array(bos + ids[:length - len(bos)], dtype=np.int64), "long/positions": positions,
              "long/decode_from": np.array(decode_from)}
    return arrays, {"checked": True, "tokens": length, "prefill_length": settings.prefill_length,
                    "decode_from": decode_from, "positions": len(positions), "stride": stride}


def _bos_of_text(tokenizer: Any) -> list[int]:
    """[BOS] where the tokenizer starts every text with it (Llama, Gemma: the model always reads one first, and
    a window without it is scored as no real input is), else []: llama.cpp's perplexity tool follows the same
    rule (the vocabulary's add-BOS flag)."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def _text_sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _reference(lm: CausalLM, windows: np.ndarray, long: dict[str, np.ndarray], prompts: list[list[int]],
               new_tokens: int, progress: Progress) -> dict:
    """What the PyTorch model predicts: next-token log-probabilities on every eval window and at the long
    window's judged positions (float16), and greedy tokens with the logits each was chosen from on every prompt."""
    import torch

    progress(f"reference: PyTorch on {len(windows)} eval windows{', one cache-long window' if long else ''} and "
             f"{len(prompts)} prompts")
    arrays: dict[str, np.ndarray] = {"tf/tokens": windows, **long}
    rows, target_rows = [], []

    with torch.no_grad():
        for window in windows:
            distributions, exact = logprobs_at(lm.model, window, np.arange(len(window) - 1))
            rows.append(distributions)
            target_rows.append(exact)
        if long:
            arrays["long/logprobs"], arrays["long/target_logprobs"] = logprobs_at(lm.model, long["long/tokens"],
                                                                                 long["long/positions"])
        for index, prompt in enumerate(prompts):
            tokens, logits = _eager_greedy(lm.model, prompt, new_tokens)
            arrays |= {f"gen/{index}/prompt": np.array(prompt, np.int64), f"gen/{index}/tokens": np.array(tokens),
                       f"gen/{index}/logits": logits}
    arrays["tf/logprobs"] = np.stack(rows)
    arrays["tf/target_logprobs"] = np.stack(target_rows)
    return arrays


def logprobs_at(model: Any, window: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's next-token log-probabilities at `positions` of one window: (the distributions, float16, for KL
    and top-1; each next token's exact log-probability, for perplexity)."""
    import torch

    logits = model(input_ids=torch.from_numpy(window[None])).logits[0, torch.from_numpy(positions)]
    logprobs = torch.log_softmax(logits.double(), dim=-1).numpy()
    return logprobs.astype(np.float16), logprobs[np.arange(len(positions)), window[positions + 1]]


def _eager_greedy(model: Any, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    logits = model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True).logits[0, -1]
    tokens, chosen_from = [], []
    for _ in range(new_tokens):
        token = int(torch.argmax(logits))
        tokens.append(token)
        chosen_from.append(logits.float().numpy())
        if len(tokens) < new_tokens:
            logits = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits[0, -1]
    return tokens, np.stack(chosen_from)


def float32_bytes(model: Any) -> int:
    """The model's weights at float32, each tensor once (a tied head is the embedding's): max_bytes_ratio's
    denominator."""
    return 4 * sum(p.numel() for p in model.parameters())


def store_tie_paths(model: Any, reference: dict, runs: list[dict]) -> int:
    """Store, as gen/KEY/tie/N, each artifact greedy text (judge's free-running runs) that left the reference's
    and is still the float model's own: fed it, the model ranks every one of its tokens first or within
    TIE_MARGIN logits of first. Its repetition is then the model's on that path, not the artifact's (the
    verdict compares it with this text). Returns how many were stored."""
    import torch

    stored = 0
    for run in runs:
        key, text = run["prompt"], [int(t) for t in run["generated"]]
        if run["first_divergence"] is None or text in tie_paths(reference, str(key)):
            continue
        prompt = [int(t) for t in reference[f"gen/{key}/prompt"]]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + text[:-1]])).logits[0, len(prompt) - 1:]
        gaps = logits.max(-1).values - logits[torch.arange(len(text)), text]
        if float(gaps.max()) < TIE_MARGIN:
            reference[f"gen/{key}/tie/{len(tie_paths(reference, str(key)))}"] = np.array(text, np.int64)
            stored += 1
    return stored


def _eager_speed(model: Any, prompt: list[int], new_tokens: int, threads: int) -> dict:
    """Eager PyTorch on the same prompt, token count and thread count as the artifacts' speed runs."""
    import torch
    from transformers import DynamicCache

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            _eager_greedy(model, prompt[:4], 2)  # warm-up
            cache = DynamicCache(config=model.config)
            start = time.perf_counter()
            logits = model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True).logits[0, -1]
            first = time.perf_counter()
            for _ in range(new_tokens - 1):
                token = int(torch.argmax(logits))
                logits = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits[0, -1]
            end = time.perf_counter()
    finally:
        torch.set_num_threads(previous)
    return {"threads": threads, "prompt_tokens": len(prompt), "decode_tokens": new_tokens - 1,
            "ttft_ms": round(1000 * (first - start), 2),
            "prefill_tokens_per_s": round(len(prompt) / (first - start), 1),
            "decode_tokens_per_s": round((new_tokens - 1) / (end - first), 1), "runtime": "PyTorch eager"}


MIN_CALIBRATION_WINDOWS = 8
MAX_CALIBRATION_OVERLAP = 0.02  # share of the eval text's lines a calibration text may also contain


def _read_text(path: Path, flag: str) -> str:
    if not Path(path).is_file():
        raise UserInputError(f"{flag} text {path} does not exist; pass a UTF-8 text file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"{path} is not UTF-8 text; a language model's {flag} is a text file") from None


def _calibration_text(options: Any, eval_text: str) -> tuple[str, dict]:
    """--calib, else the training part of the stdlib docstrings (which the default eval text never shares);
    refused when it shares the eval text's lines: a quantization calibrated on what the verdict judges."""
    from exporter.lm.corpus import stdlib_text

    if options.calib is None:
        text, source = stdlib_text("train"), "docstrings of Python's standard library, training part"
    else:
        text, source = _read_text(options.calib, "--calib"), str(options.calib)
    lines = {line.strip() for line in eval_text.splitlines() if len(line.strip()) >= 40}
    shared = lines & {line.strip() for line in text.splitlines()}
    overlap = len(shared) / max(1, len(lines))
    if overlap > MAX_CALIBRATION_OVERLAP:
        raise UserInputError(f"the calibration text {source} contains {overlap:.0%} of the eval text's lines; "
                             "calibrate on other text than the verdict judges (--calib and --eval)")
    return text, {"source": source, "sha256": _text_sha(text), "eval_lines_shared": round(overlap, 4)}


def _calibration_batches(lm: CausalLM, text: str, settings: Any) -> list[Any]:
    from exporter.quant.plan import calibration_batches

    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return calibration_batches(ids, settings.window_length, settings.calibration_windows,
                               min(MIN_CALIBRATION_WINDOWS, settings.calibration_windows))


def _files(paths: list[Path]) -> list[dict]:
    return [{"path": p.name, "bytes": size_bytes(p), "sha256": sha256_file(p)} for p in paths]


class VariantBuilder:
    """Emits one variant into the artifact directory through its format's LmBackend (each format lowered once,
    when its first variant needs it); re-emits a variant with layers kept for auto precision."""

    def __init__(self, lm: CausalLM, target: LmTarget, scratch: Path, progress: Progress,
                 calibration: list[Any] | None = None, float_bytes: int | None = None) -> None:
        self.lm, self.target, self.scratch, self.progress = lm, target, scratch, progress
        self.float_bytes = float_bytes or float32_bytes(lm.model)  # the source's, where pruning made the model smaller
        self.last_reader = _last_readers(target.variants)
        self.released_seconds: dict[str, float] = {}  # plan steps of the planners already released
        self.calibration = calibration or []
        self.lowered: dict[tuple[str, int], Any] = {}
        self.trace_seconds = 0.0
        self.transform_seconds: dict[str, float] = {}  # smoothing, rotation -> seconds
        self.plan = Planner(lm.model, lambda: self.calibration, progress)
        # (smoothing alpha, rotation block) -> the transformed model's lm, planner and records
        self.transformed: dict[tuple[float, int], tuple[CausalLM, Planner, dict]] = {(0.0, 0): (lm, self.plan, {})}
        self.recovered: dict[tuple[int, int], RecoveredPlanner] = {}  # (id of a planner, steps) -> its recovery
        self.finer_source: dict[str, int] | None = None  # decoder linear -> bits of its source grid, above 4

    def source_kept(self, variant: LmVariant) -> dict[str, int | None]:
        """The decoder linears a 4-bit variant keeps at 8 bits (source_precision = "keep") because its source
        holds them on a finer grid: a Q4_K_M GGUF's Q5_0, Q6_K and Q8_0 tensors are not pushed down to 4 bits."""
        if variant.row.bits != 4 or variant.row.reads.get("source_precision") is None or \
                variant.settings.source_precision != "keep":
            return {}
        if self.finer_source is None:
            modules = dict(self.lm.model.named_modules())
            found = {path: source_bits(modules[path].weight) for path in linear_modules(self.lm.model)}
            self.finer_source = {path: bits for path, bits in found.items() if bits and bits > 4}
        return dict.fromkeys(self.finer_source, 8)

    def source(self, variant: LmVariant) -> tuple[CausalLM, Planner, dict]:
        """The model a variant quantizes, the planner of its weights and what was done to the float model first
        (activation smoothing, then rotation, each exact in float); one copy per pair of settings, shared by the
        variants asking it."""
        return self._transformed(variant.settings.smoothing, variant.settings.rotation)

    def _transformed(self, alpha: float, rotation: int) -> tuple[CausalLM, Planner, dict]:
        if (alpha, rotation) not in self.transformed:
            lm, _, records = self._transformed(alpha if rotation else 0.0, 0)  # smoothed first, then rotated
            begun = time.perf_counter()
            if rotation:
                from exporter.quant.rotate import rotated_copy

                self.progress(f"rotation: Hadamard blocks of up to {rotation} on the int8-activation inputs")
                model, record = rotated_copy(lm.model, rotation, [*linear_modules(lm.model), HEAD])
                records = records | {"activation_rotation": record}
            else:
                from exporter.quant.smooth import smoothed_copy

                model, record = smoothed_copy(lm.model, self.calibration, alpha, self.progress)
                records = {"activation_smoothing": record}
            step = "rotation" if rotation else "smoothing"
            self.transform_seconds[step] = self.transform_seconds.get(step, 0.0) + time.perf_counter() - begun
            # left as it was (the record says why): the float model's plans and lowering
            self.transformed[(alpha, rotation)] = (lm, self.plan, records) if model is lm.model else (
                dataclasses.replace(lm, model=model), Planner(model, lambda: self.calibration, self.progress), records)
        return self.transformed[(alpha, rotation)]

    def plan_seconds(self) -> dict[str, float]:
        """Seconds of each weight-plan step (calibration, gptq, rtn, recovery, smoothing, rotation) over every
        planner, released ones included."""
        total = dict(self.released_seconds)
        for plan in {id(p): p for _, p, _ in self.transformed.values()}.values():
            _add_seconds(total, plan.seconds)
        for recovered in self.recovered.values():
            _add_seconds(total, {"recovery": sum(r["seconds"] for r in recovered.records.values())})
        _add_seconds(total, self.transform_seconds)
        return {step: round(seconds, 1) for step, seconds in total.items() if seconds}

    def release(self, index: int) -> None:
        """Free what no variant after the `index`-th reads: a transformed copy of the model with its planner
        (plans, calibration Hessians), recoveries and lowerings; the float model's plans and Hessians (the model
        itself stays: the report's tie paths read it). Memory then follows the variants still to come, not all
        of them (SmolLM2-135M to android-llm held two model copies, three planners' plans and two sets of
        Hessians to its last variant)."""
        for key in [key for key, last in self.last_reader.items() if last == index and key in self.transformed]:
            lm, plan, records = self.transformed[key]
            _add_seconds(self.released_seconds, plan.seconds)
            for recovery in [r for r in self.recovered if r[0] == id(plan)]:
                _add_seconds(self.released_seconds, {"recovery": sum(
                    r["seconds"] for r in self.recovered.pop(recovery).records.values())})
            if lm is self.lm:  # the float model: a fresh planner, should anything ask it again
                self.plan = Planner(lm.model, lambda: self.calibration, self.progress)
                self.transformed[key] = (lm, self.plan, records)
            else:
                del self.transformed[key]
                for lowering in [k for k in self.lowered if k[1] == id(lm.model)]:
                    del self.lowered[lowering]
        memory.hand_back()

    def emit(self, variant: LmVariant, out: Path, kept: dict[str, int | None] | None = None) -> dict:
        backend = _lm_backend(variant.format)
        lm, plan, transforms = self.source(variant)
        key = (variant.format, id(lm.model))  # one lowering per format and model (float, or one transformed copy)
        if key not in self.lowered:
            begun = time.perf_counter()
            scratch = self.scratch / f"{variant.format}-{len(self.lowered)}"
            scratch.mkdir()
            self.lowered[key] = backend.lower(lm, self.target.lm, scratch, self.progress)
            self.trace_seconds += time.perf_counter() - begun
        finer = self.source_kept(variant)
        if steps := variant.settings.recovery:  # one recovery per planner and step count, shared by variants
            recovery = (id(plan), steps)
            if recovery not in self.recovered:
                at_4 = [path for path in linear_modules(lm.model) if path not in finer]
                self.recovered[recovery] = RecoveredPlanner(plan, at_4, steps, self.progress)
            plan = self.recovered[recovery]
        if finer:
            kept = finer | (kept or {})
        emitted = backend.emit(self.lowered[key], variant, variant.settings, out, kept, plan, self.progress)
        emitted.quantization.update(transforms)
        if finer:
            bits = [self.finer_source[path] for path in finer]
            emitted.quantization["source_precision"] = {
                "kept_at_8_bits": len(finer), "source_bits": {b: bits.count(b) for b in sorted(set(bits))},
                "why": "the source holds these decoder linears on grids finer than 4 bits (source_precision = "
                       "\"keep\")"}
        if steps and (record := plan.record()):
            emitted.quantization["recovery"] = record
        stamped = format_backend(variant.format).stamp(out, provenance(self.lm.name, self.lm.sha256,
                                                                       self.target.name, variant.precision))
        files = _files([out, *emitted.extra_files, *stamped])
        return {"format": variant.format, "precision": variant.precision, "path": out.name, "files": files,
                "bytes": sum(f["bytes"] for f in files), "sha256": files[0]["sha256"], "cache": emitted.cache,
                "built_by": emitted.built_by, "why": emitted.why, "quantization": emitted.quantization,
                "budget": variant.budget.limits(), "reproducible": REPRODUCIBLE}


def _last_readers(variants: list[LmVariant]) -> dict[tuple[float, int], int]:
    """(smoothing alpha, rotation block) -> the index of the last variant that reads that copy of the model; a
    smoothed copy is also read where the first rotation made from it is."""
    last: dict[tuple[float, int], int] = {}
    for index, variant in enumerate(variants):
        key = (variant.settings.smoothing, variant.settings.rotation)
        if key[1] and key not in last:
            last[(key[0], 0)] = index
        last[key] = index
    return last


def _add_seconds(total: dict[str, float], seconds: dict[str, float]) -> None:
    for step, value in seconds.items():
        total[step] = total.get(step, 0.0) + value


def _diagnose(builder: VariantBuilder, variant: LmVariant, entry: dict, reference: dict, work: Path) -> dict:
    """Judge the variant with its runtime; blame every decoder linear (as the target's diagnose says); with auto
    precision, keep the worst at higher precision until the budget holds. Returns the manifest entry."""
    from exporter.lm.blame import blame_linears

    lm, target, progress = builder.lm, builder.target, builder.progress
    settings = variant.settings
    judged = _judged(builder, entry, reference, work)
    failing = bool(judged["violations"])
    if settings.diagnose == "off" or (settings.diagnose == "on-failure" and not failing):
        return entry | {"diagnosis": {"note": f"no per-layer blame (diagnose = \"{settings.diagnose}\")"}}
    paths = linear_modules(lm.model)
    if variant.row.bits == 4 and settings.embedding_bits == 4:  # the head (and a tied table) is quantized too
        paths.append("lm_head")
    windows = reference["tf/tokens"][:settings.blame_windows]
    logprobs = reference["tf/logprobs"][:settings.blame_windows]
    progress(f"{variant.precision}: blame: quantizing each of {len(paths)} decoder linears alone")
    symmetric = variant.row.symmetric if variant.row.symmetric is not None else \
        settings.symmetric and variant.row.bits == 4
    scheme = weight_scheme(variant.row.bits, settings.block_size, symmetric, settings.zero_points)
    method = settings.method if settings.method in METHODS else "rtn"  # onnxruntime's k-quant: no PyTorch plan
    source, plan, _ = builder.source(variant)  # the smoothed or rotated model where the variant asks it
    rows = blame_linears(source.model, paths, lambda path: plan.weight(path, scheme, method), windows, logprobs,
                         progress)
    diagnosis: dict[str, Any] = {"method": f"each decoder linear alone replaced by its weight plan ({method}, "
                                           f"{scheme.describe()}) in PyTorch, KL on {len(windows)} eval window(s)",
                                 "layers": len(rows), "blame": rows[:BLAME_ROWS_KEPT]}
    if failing and target.auto_precision:
        if variant.row.bits != 4 and (reason := _lm_backend(variant.format).cannot_keep_in_float):
            diagnosis["auto_precision"] = {"not_offered": reason, "met_budget": False}
        else:
            entry, diagnosis["auto_precision"] = _auto_precision(builder, variant, entry, rows, reference, judged,
                                                                 work)
    return entry | {"diagnosis": diagnosis}


def _judged(builder: VariantBuilder, entry: dict, reference: dict, work: Path) -> dict:
    """The artifact judged with its runtime; where its text loops after parting from the reference's at near ties
    and is still the float model's own text, that text is stored as a tie path (store_tie_paths) and judged by."""
    from validators.lm.runtime import open_lm

    artifact = open_lm(work, entry, builder.target.threads)
    size = (entry["bytes"], builder.float_bytes)
    judged = judge(artifact, reference, entry["budget"], *size)
    looping = [r for r in judged["free_running"] if r["repetition_increase"] > 0]
    if store_tie_paths(builder.lm.model, reference, looping):  # the runs are as measured: judged again by them
        judged = verdict(reference, entry["budget"], judged["teacher_forced"], judged["free_running"], *size,
                         judged["long_context"])
    return judged


def _most_kept(model: Any, rows: list[dict], bits: int, keep_bits: int, entry: dict,
               float_bytes: int | None = None) -> int:
    """How many of the worst linears auto precision may keep at keep_bits: as many as the budget's
    max_bytes_ratio (of float_bytes: the source's, else the model's) leaves room for (each adds its weights'
    elements times the bits it keeps, in bytes), else at most half of them (beyond that, ship the higher
    precision)."""
    limit = entry["budget"].get("max_bytes_ratio")
    if limit is None:
        return max(1, len(rows) // 2)
    modules = dict(model.named_modules())
    room = limit * (float_bytes or float32_bytes(model)) - entry["bytes"]
    count = 0
    for row in rows:
        room -= modules[row["module"]].weight.numel() * (keep_bits - bits) / 8
        if room < 0:
            break
        count += 1
    return count


def _auto_precision(builder: VariantBuilder, variant: LmVariant, entry: dict, rows: list[dict], reference: dict,
                    judged: dict, work: Path) -> tuple[dict, dict]:
    keep_as = 8 if variant.row.bits == 4 else None  # a 4-bit variant keeps layers at 8 bits, an 8-bit one in float
    before, first, path = entry["bytes"], judged, entry["path"]
    last: dict = {}  # the entry and judgement of the variant on disk

    def attempt(count: int) -> list[str]:
        kept = {row["module"]: keep_as for row in rows[:count]}
        builder.progress(f"{variant.precision}: auto precision: keeping the {count} worst decoder linear(s) at "
                         f"{keep_as or 'float'} {'bits' if keep_as else ''}".rstrip())
        last["entry"] = builder.emit(variant, work / path, kept)
        last["judged"] = _judged(builder, last["entry"], reference, work)
        return last["judged"]["violations"]

    finer = builder.source_kept(variant)  # at 8 bits already
    rows = [row for row in rows if row["module"] not in finer]
    most = _most_kept(builder.lm.model, rows, variant.row.bits, keep_as or 32, entry, builder.float_bytes)
    if most == 0:
        return entry, {"not_offered": f"max_bytes_ratio {entry['budget']['max_bytes_ratio']} leaves no room for a "
                                      f"decoder linear at {keep_as or 'float'} {'bits' if keep_as else ''}".rstrip(),
                       "met_budget": False}
    kept = fewest_kept(most, attempt)
    entry, judged = last["entry"], last["judged"]
    return entry, {"kept": {row["module"]: keep_as or "float" for row in rows[:kept.count]},
                   "met_budget": not judged["violations"], "candidates_tried": kept.candidates_tried,
                   "bytes_before": before, "bytes_after": entry["bytes"], "violations_before": first["violations"],
                   "kl_mean_before": first["teacher_forced"]["kl_mean"],
                   "kl_mean_after": judged["teacher_forced"]["kl_mean"]}


# export options a language-model target does not read: option -> why
UNREAD_OPTIONS = {
    "calib": ("its variants round weights to nearest and calibrate nothing (method = \"gptq\" and smoothing read a "
              "calibration text; pass the eval text with --eval)"),
    "weights": "its weights come with its source (a Hugging Face folder, a .gguf file or a factory)",
    "inputs": "its inputs are token ids, shaped by the target's [lm] table (cache_length, prefill_length)",
    "dynamic_batch": "it decodes one sequence; the [lm] table fixes the shapes",
    "output_kinds": "it is judged on its next-token distributions and generated tokens",
    "allow_synthetic_eval": "its eval is always real text (--eval, or the bundled corpus)",
}


def _refuse_unread_options(options: Any, target: LmTarget) -> None:
    from exporter.options import build_key, flag

    for name, why in UNREAD_OPTIONS.items():
        if name == "calib" and target.needs_calibration:
            continue
        if getattr(options, name, None):
            raise UserInputError(f"{flag(name)} (build-file key {build_key(name)}) does nothing for the "
                                 f"language-model target {target.name}: {why}; drop it")


PRUNED_FOLDER = "model.pruned"


def _pruned_folder(lm: CausalLM, work: Path) -> dict:
    """The pruned and distilled model as a Hugging Face folder (config, safetensors, tokenizer), to fine-tune
    further or export again."""
    folder = work / PRUNED_FOLDER
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {"pruned_model": {"path": PRUNED_FOLDER, "form": "Hugging Face folder (from_pretrained)",
                             "bytes": sum(size_bytes(p) for p in files),
                             "files": [str(p.relative_to(work)) for p in files]}}


class LmExport:
    """Prepared: the model loaded, every format's attention checked, prompts, eval windows and calibration text
    read (refused when too short or shared with the eval text), the PyTorch reference and eager speed measured.
    write() emits, diagnoses and stamps every variant."""

    libraries = LIBRARIES

    def __init__(self, options: Any, target: LmTarget, progress: Progress) -> None:
        _refuse_unread_options(options, target)
        self.target = target
        self.lm = lm = load_lm(options, progress)
        settings = target.lm
        _refuse_unsupported_attention(lm, target)
        self.prompts = _prompts(lm, target)
        windows, long, self.eval_info, eval_text = _eval_windows(lm, target, options.eval)
        self.calibration, self.calibration_info = None, None
        if target.needs_calibration:
            calibration_text, self.calibration_info = _calibration_text(options, eval_text)
            self.calibration = _calibration_batches(lm, calibration_text, settings)
        source_float_bytes = float32_bytes(lm.model)  # bytes ratios are the source's, pruned or not
        self.pruning, unpruned = None, {}
        if target.prune is not None:
            from exporter.kinds.causal_lm.pruned import pruned_lm

            self.lm, self.pruning, unpruned = pruned_lm(lm, target.prune, windows, self.calibration, progress)
            lm = self.lm
            self.pruning["calibration"] = self.calibration_info
        self.reference = _reference(lm, windows, long, self.prompts, settings.new_tokens, progress) | unpruned
        self.eager = _eager_speed(lm.model, [int(t) for t in windows[0][:settings.prefill_length]],
                                  settings.new_tokens, target.threads)
        progress(f"eager PyTorch: {self.eager['decode_tokens_per_s']} decode tokens/s on {target.threads} thread(s)")
        self.name = lm.name
        self.model = {"name": lm.name, "source": lm.source, "kind": lm.kind, "sha256": lm.sha256,
                      "architecture": lm.architecture, "float32_bytes": source_float_bytes}

    def _bundles(self, work: Path, entries: list[dict], progress: Progress) -> dict[str, dict]:
        """Per format whose backend writes one (an optional `bundle` beside LmBackend's methods): what that
        runtime's own app-side loader opens beside the artifacts, each file hashed."""
        bundles = {}
        for fmt in self.target.formats:
            writer = getattr(_lm_backend(fmt), "bundle", None)
            record = writer and writer(work, entries, self.lm.model.config, work / TOKENIZER_DIR, self.target.threads)
            if record:
                progress(f"[4/5] {fmt}: {record['runtime']} bundle ({', '.join(record['files'])})")
                bundles[fmt] = record | {"files": _files([work / name for name in record["files"]])}
        return bundles

    def write(self, work: Path, progress: Progress) -> Written:
        lm, target, settings = self.lm, self.target, self.target.lm
        with tempfile.TemporaryDirectory(prefix="edgeport-lm-") as scratch:
            progress(f"[2/5] {lm.name} ({lm.architecture}): {settings.cache_length}-token KV cache, "
                     f"{len(target.variants)} variant(s) in {', '.join(target.formats)}")
            builder = VariantBuilder(lm, target, Path(scratch), progress, self.calibration,
                                     self.model["float32_bytes"])
            entries, seconds, diagnosis_seconds = [], {}, {}
            for index, variant in enumerate(target.variants):
                progress(f"[3/5] {variant.format} {variant.precision}: {variant.row.description}")
                begun = time.perf_counter()
                with memory.step(variant.filename):
                    entry = builder.emit(variant, work / variant.filename)
                if variant.row.quantized:
                    diagnosed = time.perf_counter()
                    with memory.step(f"diagnosis of {variant.filename}"):
                        entry = _diagnose(builder, variant, entry, self.reference, work)
                    diagnosis_seconds[entry["path"]] = round(time.perf_counter() - diagnosed, 1)
                builder.release(index)
                entries.append(entry)
                seconds[entry["path"]] = round(time.perf_counter() - begun, 1)
        lm.tokenizer.save_pretrained(work / TOKENIZER_DIR)
        save_npz(work / REFERENCE, self.reference)
        section = {"prompts": settings.prompts or list(lm.prompts), "chat_template": lm.chat,
                   "new_tokens": settings.new_tokens, "prefill_length": settings.prefill_length,
                   "eval": self.eval_info, "calibration": self.calibration_info, "tokenizer": TOKENIZER_DIR,
                   "bundles": self._bundles(work, entries, progress), "notes": lm.notes}
        log = {"trace_seconds": round(builder.trace_seconds, 1), "artifact_seconds": seconds,
               "weight_plan_seconds": builder.plan_seconds(),
               "diagnosis_seconds": diagnosis_seconds, "eager": self.eager}
        sections = {"lm": section}
        if self.pruning is not None:
            sections["pruning"] = self.pruning | _pruned_folder(lm, work)
        return Written(entries, sections, {"path": REFERENCE}, log)
