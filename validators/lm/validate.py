"""The token-level verdict on a language-model artifact directory, from its files alone (manifest.json,
reference.npz, the tokenizer folder): what `edgeport validate DIR` and the export's last stage run.

Every artifact runs with its own runtime (onnxruntime, ExecuTorch, ai-edge-litert, the MIL interpreter) and
KV cache: teacher-forced on the eval windows (perplexity ratio, KL, same top-1) and free-running on the prompts
(first divergence, |delta logit| before it, repetition); speed is measured in a fresh process so peak memory
is the artifact's alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.artifact_dir import read_export_log, read_manifest, reference_file
from common.errors import ArtifactError, first_line
from common.files import load_npz, sha256_file
from devices import load_device
from validators import budgets
from validators.estimate import estimate, estimate_violations, kv_cache_bytes
from validators.latency import contention_note
from validators.lm.metrics import drift_onset, drift_text, forced_decoding, free_running, repetition, teacher_forced
from validators.metrics import metrics_block

REFERENCE = "reference.npz"
TOKENIZER_DIR = "tokenizer"
# a pruned export's reference: the unpruned model's exact log-probability of each eval window's next tokens
UNPRUNED_TARGET_LOGPROBS = "unpruned/tf/target_logprobs"
# the long window's figures bounded by the short windows' limits unless the budget sets its own
LONG_LIMITS = {"max_ppl_ratio": "max_long_ppl_ratio", "max_kl_mean": "max_long_kl_mean",
               "min_top1_agreement": "min_long_top1_agreement"}


def load_lm_reference(directory: Path, manifest: dict) -> tuple[dict, list[str]]:
    path, violations = reference_file(directory, manifest)
    return load_npz(path), violations


def prompts_of(reference: dict) -> list[str]:
    return sorted({key.split("/")[1] for key in reference if key.startswith("gen/")}, key=int)


def tie_paths(reference: dict, key: str) -> list[list[int]]:
    """Greedy texts on prompt KEY that part from the reference's at near ties and are still the float model's
    own (the export checks each artifact's text with the model: exporter/kinds/causal_lm/export.py
    store_tie_paths); stored as gen/KEY/tie/N."""
    return [[int(t) for t in reference[name]] for name in reference if name.startswith(f"gen/{key}/tie/")]


def judge(lm, reference: dict, budget: dict, nbytes: int, float_bytes: int | None = None) -> dict:
    """Run one opened artifact (validators.lm.runtime.CachedLM) against the reference: its teacher-forced and
    free-running figures, its named metrics and the budget's violations."""
    windows, logprobs = reference["tf/tokens"], reference["tf/logprobs"]
    artifact_logits, targets, reference_rows = [], [], []
    for window, window_logprobs in zip(windows, logprobs, strict=True):
        lm.reset()
        artifact_logits.append(lm.prefill([int(t) for t in window])[:-1])
        targets.append(window[1:])
        reference_rows.append(window_logprobs)
    forced = teacher_forced(np.concatenate(reference_rows), np.concatenate(artifact_logits), np.concatenate(targets),
                            reference["tf/target_logprobs"].reshape(-1))
    runs = []
    for key in prompts_of(reference):
        expected = [int(t) for t in reference[f"gen/{key}/tokens"]]
        prompt = [int(t) for t in reference[f"gen/{key}/prompt"]]
        tokens, logits = lm.greedy(prompt, len(expected))
        # until the texts part, the greedy run was fed the reference's tokens: its logits are the forced ones
        fed = logits if tokens == expected else lm.forced(prompt, expected)
        runs.append({"prompt": int(key), "generated": tokens,
                     **free_running(expected, reference[f"gen/{key}/logits"], tokens, logits),
                     **forced_decoding(expected, reference[f"gen/{key}/logits"], fed)})
    long = long_context(lm, reference, forced["kl_mean"], budget.get("max_long_kl_mean", budget.get("max_kl_mean")))
    return verdict(reference, budget, forced, runs, nbytes, float_bytes, long)


def long_context(lm, reference: dict, short_kl_mean: float, kl_limit: float | None = None) -> dict | None:
    """The cache-long window through the artifact as a device runs a long prompt and then generates: prefill in
    chunks up to long/decode_from, then one decode call per token to the end of the cache; judged teacher-forced
    at the stored positions, with KL per position and where it starts to drift. None: the reference has no long
    window (exported before it, or an eval text shorter than the cache)."""
    if "long/tokens" not in reference:
        return None
    tokens = [int(t) for t in reference["long/tokens"]]
    decode_from, positions = int(reference["long/decode_from"]), reference["long/positions"]
    lm.reset()
    rows = [lm.prefill(tokens[:decode_from])] + [lm.forward([token]) for token in tokens[decode_from:-1]]
    logits = np.concatenate(rows)  # row p predicts token p + 1
    figures = teacher_forced(reference["long/logprobs"], logits[positions], np.array(tokens)[positions + 1],
                             reference["long/target_logprobs"], positions=positions)
    return {"tokens": len(tokens), "prefill_length": lm.prefill_length, "decode_from": decode_from, **figures,
            "drift": drift_onset(figures["kl_by_position"], short_kl_mean, kl_limit)}


def verdict(reference: dict, budget: dict, forced: dict, runs: list[dict], nbytes: int,
            float_bytes: int | None = None, long: dict | None = None) -> dict:
    """judge's figures, metrics and violations from what it measured; the repetition of each run against the tie
    paths stored now (the export stores them after a first verdict, and only this part changes)."""
    for run in runs:
        key = str(run["prompt"])
        run.update(repetition([int(t) for t in reference[f"gen/{key}/tokens"]], run["generated"],
                              tie_paths(reference, key)))
    metrics = lm_metrics(forced, runs, nbytes, float_bytes=float_bytes, long=long)
    return {"teacher_forced": forced, "free_running": runs, "long_context": long, "metrics": metrics,
            "violations": violations(budget, metrics, forced, runs, long)}


def violations(budget: dict, metrics: dict, forced: dict, runs: list[dict], long: dict | None = None) -> list[str]:
    """The one budget check (validators/budgets.py), told which prompts and positions its figures come from."""
    limits = {LONG_LIMITS[name]: value for name, value in budget.items() if name in LONG_LIMITS} | dict(budget)
    if "min_greedy_tokens" in limits and runs:  # a prompt gives only new_tokens tokens
        limits["min_greedy_tokens"] = min(limits["min_greedy_tokens"], min(r["tokens"] for r in runs))
    return budgets.check(limits, metrics, _why(limits, forced, runs, long))


def _long_why(long: dict) -> str:
    where = (f"the {long['tokens']}-token window filling the cache (prefill in chunks of {long['prefill_length']} to "
             f"position {long['decode_from']}, then one decode call per token), {long['positions']} positions")
    return f"{where}: {drift_text(long['drift'])}" if long["drift"] else where


def _why(limits: dict, forced: dict, runs: list[dict], long: dict | None = None) -> dict[str, str]:
    on_text = f"teacher-forced, {forced['positions']} positions"
    why = {metric: on_text for metric in ("ppl_ratio", "kl_mean", "kl_p99", "top1_agreement")}
    if long is not None:
        why |= {metric: _long_why(long) for metric in ("long_ppl_ratio", "long_kl_mean", "long_top1_agreement")}
    why["max_abs"] = "|logit delta| before the greedy runs diverge"
    if (limit := limits.get("min_greedy_tokens")) is not None:
        why["greedy_tokens"] = "; ".join(
            f"prompt {r['prompt']}: greedy tokens differ from the reference at position {r['first_divergence']}"
            for r in runs if r["matching_tokens"] < limit)
    if (limit := limits.get("min_decode_top1_agreement")) is not None:
        missed = [f"prompt {r['prompt']} at {r['decode_top1_agreement']:.0%} of {r['tokens']} positions (first miss "
                  f"at position {r['decode_first_miss']})" for r in runs if r["decode_top1_agreement"] < limit]
        why["decode_top1_agreement"] = ("fed the reference's greedy text, the artifact predicts its next token: "
                                        + "; ".join(missed) + ": its own text is not the reference's answer")
    if (limit := limits.get("max_repetition_increase")) is not None:
        why["repetition_increase"] = "; ".join(
            f"prompt {r['prompt']} loops: {r['artifact_repetition']:.0%} of its 3-grams repeat (reference "
            f"{r['reference_repetition']:.0%}{' on the path the near tie took' if r.get('parted_at_tie') else ''})"
            for r in runs if r["repetition_increase"] > limit)
    return why


def measure_speed(directory: Path, entry: dict, prompt: list[int], new_tokens: int, threads: int) -> dict:
    """Time to first token, prefill and decode tokens/s, and peak RSS, in a fresh process (validators.lm.speed)."""
    request = json.dumps({"directory": str(directory.resolve()), "entry": entry, "prompt": prompt,
                          "new_tokens": new_tokens, "threads": threads})
    done = subprocess.run([sys.executable, "-m", "validators.lm.speed"], input=request, capture_output=True,
                          text=True, check=False, cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise RuntimeError(f"the speed run of {entry['path']} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def decode_texts(directory: Path, reference: dict, results: list[dict]) -> list[dict]:
    """Per prompt: the prompt, the reference's text and each artifact's text, decoded by the model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR, local_files_only=True)
    rows = []
    for key in prompts_of(reference):
        row = {"prompt": tokenizer.decode([int(t) for t in reference[f"gen/{key}/prompt"]]),
               "reference": tokenizer.decode([int(t) for t in reference[f"gen/{key}/tokens"]]), "artifacts": {}}
        for result in results:
            run = next(r for r in result["lm"]["free_running"] if r["prompt"] == int(key))
            row["artifacts"][result["path"]] = tokenizer.decode(run["generated"])
        rows.append(row)
    return rows


def reference_problem(reference: dict) -> str:
    """Why the reference proves nothing ('' if it is usable): NaN, or a next-token distribution so flat that
    any artifact agrees with it (an untrained model)."""
    logprobs = reference["tf/logprobs"].astype(np.float32)
    if not np.isfinite(logprobs).all():
        return "the reference log-probabilities contain NaN or Inf"
    vocab = logprobs.shape[-1]
    targets = reference["tf/tokens"][:, 1:]
    nll = -np.take_along_axis(logprobs, targets[..., None], axis=-1).mean()
    if np.exp(nll) > 0.5 * vocab:
        return (f"the reference model's perplexity on the eval text is {np.exp(nll):.0f} of a {vocab}-token "
                "vocabulary: it predicts nearly nothing, so agreeing with it proves little")
    return ""


def _bundle_violations(directory: Path, manifest: dict, reference: dict, results: list[dict],
                       progress: Callable[[str], None]) -> list[str]:
    """Each runtime bundle (the manifest's lm.bundles) opened by that runtime's own library: its files as hashed,
    its tokenizer against the source's (the directory's violations), its generation loop against each artifact's
    greedy run (that artifact's violations)."""
    from transformers import AutoTokenizer

    from validators.lm.bundle import BundleRuntime, open_bundle

    problems = []
    for fmt, bundle in (manifest["lm"].get("bundles") or {}).items():
        changed = [f"{f['path']} ({bundle['runtime']} bundle) differs from the manifest's sha256 or is missing: "
                   "re-export" for f in bundle["files"]
                   if not (directory / f["path"]).is_file() or sha256_file(directory / f["path"]) != f["sha256"]]
        if changed:
            problems += changed
            continue
        progress(f"{bundle['runtime']} bundle: its tokenizer and its generation loop, as an app runs them")
        source = AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR, local_files_only=True)
        try:
            runtime = open_bundle(fmt, directory, bundle, source)
            problems += runtime.tokenizer_problems(bundle["prompt"], manifest, reference, source)
        except RuntimeError as exc:  # the runtime's library refuses the bundle, as it would in the app
            problems.append(f"{bundle['runtime']} cannot open its bundle ({type(exc).__name__}: {first_line(exc)}): "
                            "re-export")
            continue
        eos = set(bundle["eos_token_ids"])
        for result in (r for r in results if r["format"] == fmt):
            if not isinstance(runtime, BundleRuntime):
                result["bundle"] = {"runtime": bundle["runtime"], "greedy_equal": None,
                                    "not_checked": f"the generation loop of {bundle['runtime']}, which does "
                                                   "not run on this host"}
                continue
            try:
                mismatched = runtime.generation_problems(result["path"], manifest, reference,
                                                         result["lm"]["free_running"], eos, source)
            except RuntimeError as exc:
                mismatched = [f"{bundle['runtime']} cannot generate with {result['path']} ({type(exc).__name__}: "
                              f"{first_line(exc)})"]
            result["bundle"] = {"runtime": bundle["runtime"], "greedy_equal": not mismatched}
            result["budget"]["violations"] += mismatched
            result["budget"]["passed"] = not result["budget"]["violations"]
    return problems


def pruning_cost(forced: dict, reference: dict, budget: dict) -> tuple[dict, list[str]]:
    """A pruned export's artifact judged against the unpruned model by [prune.budget]: its perplexity over the
    unpruned model's on the same eval positions, what pruning, distillation and this variant's conversion cost
    together (exact: both are means over the same next tokens)."""
    if UNPRUNED_TARGET_LOGPROBS not in reference:
        return {}, ["the target prunes, but the stored reference holds no unpruned log-probabilities to judge what "
                    "pruning cost; re-export"]
    unpruned_ppl = float(np.exp(-reference[UNPRUNED_TARGET_LOGPROBS].astype(np.float64).mean()))
    metrics = {"ppl_ratio": forced["artifact_ppl"] / unpruned_ppl}
    missed = budgets.check(budget, metrics)
    return ({"against_unpruned": {"metrics": metrics, "budget": budget, "violations": missed}},
            [f"against the unpruned model: {v}" for v in missed])


def _unchecked_long_context(lm_info: dict) -> str:
    long = lm_info["eval"].get("long_context") or {
        "checked": False, "why": "the directory was exported before the long-context window: re-export to check it"}
    return "" if long["checked"] else f"long context NOT checked: {long['why']}"


def lm_metrics(forced: dict, runs: list[dict], nbytes: int, speed: dict | None = None,
               float_bytes: int | None = None, long: dict | None = None,
               kv_bytes: int | None = None, estimates: list[dict] | None = None) -> dict[str, float]:
    speed, long, estimates = speed or {}, long or {}, estimates or []
    return metrics_block(
        kv_cache_bytes=kv_bytes,
        est_decode_tokens_per_s=min((e["decode_tokens_per_s"] for e in estimates if "decode_tokens_per_s" in e),
                                    default=None),
        est_peak_memory_mb=max((e["peak_memory_mb"] for e in estimates if "peak_memory_mb" in e), default=None),
        long_ppl_ratio=long.get("ppl_ratio"), long_kl_mean=long.get("kl_mean"),
        long_top1_agreement=long.get("top1_agreement"),
        bytes=nbytes, bytes_ratio=nbytes / float_bytes if float_bytes else None,
        max_abs=max((r["max_abs_logit_delta"] for r in runs), default=0.0),
        top1_agreement=forced["top1_agreement"], ppl_ratio=forced["ppl_ratio"], kl_mean=forced["kl_mean"],
        kl_p99=forced["kl_p99"], greedy_tokens=min((r["matching_tokens"] for r in runs), default=None),
        decode_top1_agreement=min((r["decode_top1_agreement"] for r in runs if "decode_top1_agreement" in r),
                                  default=None),
        repetition_increase=max((r["repetition_increase"] for r in runs), default=None),
        decode_tokens_per_s=speed.get("decode_tokens_per_s"), prefill_tokens_per_s=speed.get("prefill_tokens_per_s"),
        ttft_ms=speed.get("ttft_ms"), peak_rss_mb=speed.get("peak_rss_mb"))


def validate_lm_directory(directory: Path, progress: Callable[[str], None] = lambda _: None) -> dict:
    from validators.lm.runtime import open_lm

    manifest = read_manifest(directory)
    lm_info = manifest["lm"]
    threads = manifest["target"]["profile"]["runtime"]["threads"]
    devices = [load_device(name) for name in manifest["target"]["profile"].get("devices", [])]
    float_bytes = manifest["model"].get("float32_bytes")  # absent in directories exported before it
    reference, run_violations = load_lm_reference(directory, manifest)
    provisional = reference_problem(reference)
    speed_prompt = [int(t) for t in reference["tf/tokens"][0][:lm_info["prefill_length"]]]
    pruning = manifest.get("pruning")
    if pruning and not pruning["met"]:
        run_violations.append(f"pruning: {pruning['not_met']}")
    results = []
    for entry in manifest["artifacts"]:
        missing = [f["path"] for f in entry["files"] if not (directory / f["path"]).exists()]
        if missing:
            raise ArtifactError(f"{directory / missing[0]} is listed in the manifest but missing; re-export")
        files_problem = [f"{f['path']} differs from the manifest's sha256: the artifact changed after export"
                         for f in entry["files"] if sha256_file(directory / f["path"]) != f["sha256"]]
        lm = open_lm(directory, entry, threads)
        progress(f"validating {entry['path']} with {lm.runtime} (teacher-forced and free-running)")
        judged = judge(lm, reference, entry["budget"], entry["bytes"], float_bytes)
        progress(f"measuring {entry['path']}: time to first token, prefill and decode tokens/s, peak memory")
        speed = measure_speed(directory, entry, speed_prompt, lm_info["new_tokens"], threads)
        estimates = [estimate(entry, manifest, directory, device) for device in devices]
        metrics = lm_metrics(judged["teacher_forced"], judged["free_running"], entry["bytes"], speed, float_bytes,
                             judged["long_context"], kv_cache_bytes(entry["cache"]), estimates)
        cost, missed = pruning_cost(judged["teacher_forced"], reference,
                                    manifest["target"]["profile"]["prune"]["budget"]) if pruning else ({}, [])
        problems = files_problem + judged["violations"] + estimate_violations(entry["budget"], metrics, estimates) \
            + missed
        results.append(cost | {
            "format": entry["format"], "precision": entry["precision"], "path": entry["path"], "bytes": entry["bytes"],
            "sha256": entry["sha256"], "runtime": lm.runtime, "built_by": entry["built_by"],
            "quantization": entry.get("quantization"),
            "metrics": metrics,
            "lm": {"teacher_forced": judged["teacher_forced"], "free_running": judged["free_running"],
                   "long_context": judged["long_context"], "speed": speed},
            "estimates": estimates,
            "diagnosis": entry.get("diagnosis"),
            "budget": {"passed": not problems, "violations": problems, "limits": entry["budget"]},
        })
    run_violations += _bundle_violations(directory, manifest, reference, results, progress)
    export_log = read_export_log(directory)
    return {
        "kind": manifest["kind"],
        "model": {k: manifest["model"][k] for k in ("name", "source", "sha256")},
        "target": manifest["target"]["name"],
        "passed": not provisional and not run_violations and all(r["budget"]["passed"] for r in results),
        "provisional": provisional,
        "violations": run_violations,
        "data": {"eval": lm_info["eval"], "prompts": len(prompts_of(reference)), "new_tokens": lm_info["new_tokens"]},
        "bundles": {fmt: {"runtime": b["runtime"], "opens": b["opens"], "prompt": b["prompt"]["steps"]}
                    for fmt, b in (lm_info.get("bundles") or {}).items()},
        "artifacts": results,
        **({"pruning": pruning} if pruning else {}),
        "texts": decode_texts(directory, reference, results),
        "eager": (export_log or {}).get("eager"),
        "notes": lm_info.get("notes", []) + list(filter(None, [contention_note(), _unchecked_long_context(lm_info)])),
        "latency_contended": bool(contention_note()),
        "export": export_log,
    }
