"""What a device will do with an artifact directory's artifacts: estimates, never measurements.

A language model's decode reads its weights (the whole file, as the calibration points count it) and its KV
cache once per token: tokens/s = effective bandwidth / those bytes, at a full cache (a static cache is read whole
every step). Prefill is compute: 2 x parameters per token at the device's effective throughput for the variant's
arithmetic, where a published point fitted one. Peak memory is a floor: weights + KV cache at the cache length.
An Ethos-U device compiles an int8 .tflite with vela and gives vela's own figures. The effective figures come
from devices/calibration.toml (devices.fit); every figure here is labelled an estimate.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common.artifact_dir import read_manifest
from devices import Device, compute_class, fit

ESTIMATED = ("min_est_decode_tokens_per_s", "max_est_peak_memory_mb")  # the budget limits bounding estimates
MEMORY_FLOOR = ("a floor: weights + KV cache; the runtime's own buffers are not counted (ExecuTorch's published "
                "Llama 3.2 1B/3B RSS is 1.2-1.8x its .pte)")


def kv_cache_bytes(cache: dict) -> int:
    """The K and V the runtime holds at the artifact's cache length (the manifest's cache geometry; float32 unless
    the format records another dtype: Core ML's float16 states)."""
    element = {"float32": 4, "float16": 2}[cache.get("dtype", "float32")]
    return 2 * cache["layers"] * cache["kv_heads"] * cache["head_dim"] * cache["cache_length"] * element


def lm_estimate(artifact: dict, parameters: float, device: Device) -> dict:
    """One LM artifact on one device (its manifest entry; parameters: the model's weights counted once)."""
    effective = fit(device)
    cache = artifact["cache"]
    kv_bytes = kv_cache_bytes(cache)
    activations = str((artifact.get("quantization") or {}).get("activations", ""))
    arithmetic = compute_class(artifact["precision"], int8_activations=activations.startswith("int8"))
    row = {"artifact": artifact["path"], "device": device.name, "estimate": True,
           "decode_tokens_per_s": round(effective.bytes_per_s / (artifact["bytes"] + kv_bytes), 1),
           "decode_at": f"a full cache of {cache['cache_length']} positions", "bandwidth": effective.bandwidth,
           "arithmetic": arithmetic,
           "peak_memory_mb": round((artifact["bytes"] + kv_bytes) / 1e6, 1), "peak_memory_is": MEMORY_FLOOR,
           "app_limit_mb": device.app_limit_mb}
    rate = effective.compute_gops.get(arithmetic)
    if rate:
        prefill = rate * 1e9 / (2 * parameters)
        row.update(prefill_tokens_per_s=round(prefill, 1), prefill_from=effective.compute_from[arithmetic],
                   time_to_first_token_s=round(cache["prefill_length"] / prefill, 3))
    else:
        row["prefill_tokens_per_s"] = None
        row["prefill_not_estimated"] = f"no published prefill point for {arithmetic} arithmetic on {device.name}"
    return row


def estimate_violations(limits: dict[str, float], metrics: dict[str, float], estimates: list[dict]) -> list[str]:
    """The budget's limits on estimates, each device's app memory limit (the artifact's weights + KV cache alone
    over it fails, with both figures), and a limit on estimates with no device to estimate on (never passed)."""
    from validators import budgets

    on_estimates = {k: v for k, v in limits.items() if k in ESTIMATED}
    if on_estimates and not any("decode_tokens_per_s" in e for e in estimates):
        return [f"{', '.join(on_estimates)} NOT checked: no device of the target estimates a language model (add "
                "one from devices/ to devices = [...], then re-export)"]
    over = [f"estimated peak memory (est_peak_memory_mb) {e['peak_memory_mb']:g} MB exceeds {e['device']}'s app "
            f"memory limit of {e['app_limit_mb']:g} MB (an estimate: {MEMORY_FLOOR})"
            for e in estimates if e.get("app_limit_mb") is not None and e["peak_memory_mb"] > e["app_limit_mb"]]
    return budgets.check(on_estimates, metrics) + over


def npu_estimate(artifact: dict, directory: Path, device: Device) -> dict:
    """vela's figures for an int8 .tflite on an Ethos-U device."""
    from common.vela import VelaError, compile_with_vela

    row = {"artifact": artifact["path"], "device": device.name, "estimate": True}
    if artifact["format"] != "tflite" or not artifact["precision"].startswith("int8"):
        row["not_estimated"] = "an Ethos-U runs full-integer int8 .tflite only"
        return row
    npu = device.npu
    with tempfile.TemporaryDirectory(prefix="edgeport-estimate-") as scratch:
        try:
            summary = compile_with_vela(directory / artifact["path"], Path(scratch), npu["accelerator"],
                                        npu["system_config"], npu["memory_mode"], "compiled.tflite").summary
        except VelaError as exc:
            row["not_estimated"] = str(exc)
            return row
    row.update({k: summary[k] for k in ("inference_ms_estimate", "npu_op_coverage", "sram_kib", "flash_kib",
                                        "macs")}, by="vela (its static estimate for this configuration)")
    return row


# a tensor model's variant: (bytes per weight, bytes per activation element, arithmetic); weight-only schemes
# compute in float16 from their compressed weights (Core ML), dynamic int8 reads and writes float activations
ELEMENTS = {"fp32": (4, 4, "float32"), "fp16": (2, 2, "float16"), "int8": (1, 1, "int8"), "int8_full": (1, 1, "int8"),
            "int8_dynamic": (1, 4, "int8"), "w8a16": (1, 2, "int16"), "w8": (1, 2, "float16"),
            "palette6": (0.75, 2, "float16"), "palette4": (0.5, 2, "float16")}


def roofline_estimate(artifact: dict, costs: dict | None, device: Device) -> dict:
    """A tensor model on a CPU/GPU device: each operator takes the longer of reading and writing its elements at
    the effective bandwidth and computing its MACs at the effective throughput of the variant's arithmetic, summed
    over the graph. Without a fitted throughput for that arithmetic, or without the graph's costs (a TorchScript
    source), only the memory term: a floor."""
    effective = fit(device)
    bandwidth = effective.bytes_per_s
    row = {"artifact": artifact["path"], "device": device.name, "estimate": True, "bandwidth": effective.bandwidth}
    if not costs:
        return row | {"latency_floor_ms": round(1000 * artifact["bytes"] / bandwidth, 4),
                      "latency_is": "a floor: the artifact's bytes read once (the graph's operators were not counted: "
                                    "a TorchScript source)"}
    weight_bytes, activation_bytes, arithmetic = ELEMENTS.get(artifact["precision"], (4, 4, "float32"))
    rate = effective.compute_gops.get(arithmetic)
    seconds, bound_by_memory = 0.0, 0
    for op in costs["ops"]:
        memory = (op["weights"] * weight_bytes + op["activations"] * activation_bytes) / bandwidth
        compute = 2 * op["macs"] / (rate * 1e9) if rate else 0.0
        seconds += max(memory, compute)
        bound_by_memory += memory >= compute
    if not rate:
        return row | {"latency_floor_ms": round(1000 * seconds, 4), "macs": costs["macs"], "arithmetic": arithmetic,
                      "latency_is": f"a floor: memory only, no published throughput for {arithmetic} arithmetic on "
                                    f"{device.name}"}
    return row | {"latency_ms": round(1000 * seconds, 4), "macs": costs["macs"], "arithmetic": arithmetic,
                  "latency_is": f"a roofline over {len(costs['ops'])} operators ({bound_by_memory} bound by memory) at "
                                f"{rate:.0f} effective GOPS of {arithmetic} (fitted on "
                                f"{effective.compute_from[arithmetic]}); per-operator dispatch is not counted, so "
                                "small models run slower than this"}


def estimate(artifact: dict, manifest: dict, directory: Path, device: Device) -> dict:
    """One artifact (its manifest entry) on one device, whichever the kind and the device: vela's figures on an
    Ethos-U, the decode/prefill/memory estimate of a language model, a tensor model's roofline."""
    if device.npu is not None:
        return npu_estimate(artifact, directory, device)
    if manifest.get("kind") != "causal-lm":
        return roofline_estimate(artifact, manifest.get("costs"), device)
    float_bytes = manifest["model"].get("float32_bytes")  # absent in directories exported before it
    if float_bytes is None:
        return {"artifact": artifact["path"], "device": device.name, "estimate": True,
                "not_estimated": "the manifest predates the model's parameter count: re-export"}
    return lm_estimate(artifact, float_bytes / 4, device)


def estimate_directory(directory: Path, devices: list[Device]) -> list[dict]:
    manifest = read_manifest(directory)
    return [estimate(artifact, manifest, directory, device) for device in devices for artifact in manifest["artifacts"]]


def lm_line(row: dict) -> str:
    """One LM artifact's estimate on one device, in words."""
    prefill = (f"prefill {row['prefill_tokens_per_s']:g} tokens/s, first token {row['time_to_first_token_s']:g} s"
               if row["prefill_tokens_per_s"] else f"prefill not estimated ({row['prefill_not_estimated']})")
    limit = row["app_limit_mb"]
    fits = "" if limit is None else \
        (" (within" if row["peak_memory_mb"] <= limit else " (EXCEEDS") + f" the app limit {limit:g} MB)"
    return (f"decode {row['decode_tokens_per_s']:g} tokens/s at {row['decode_at']} (bound by memory bandwidth; "
            f"per-token runtime overhead is not counted, so a model of a few MB runs far below it); {prefill}; "
            f"peak memory >= {row['peak_memory_mb']:g} MB{fits}")


def tensor_line(row: dict) -> str:
    figure = (f"latency {row['latency_ms']:g} ms" if "latency_ms" in row
              else f"latency >= {row['latency_floor_ms']:g} ms")
    return f"{figure} per inference ({row['latency_is']})"


def estimate_line(row: dict) -> str:
    """One artifact's estimate on one device, in words, whatever the kind."""
    if "decode_tokens_per_s" in row:
        return lm_line(row)
    if "inference_ms_estimate" in row:
        return (f"{row['inference_ms_estimate']:.3f} ms per inference, NPU coverage {row['npu_op_coverage']:.0%}, "
                f"SRAM {row['sram_kib']:.1f} KiB, flash {row['flash_kib']:.1f} KiB ({row['by']})")
    if "latency_ms" in row or "latency_floor_ms" in row:
        return tensor_line(row)
    return f"not estimated ({row['not_estimated']})"


def render(rows: list[dict], devices: list[Device]) -> str:
    lines = []
    for device in devices:
        lines.append(f"{device.name}: {device.description} (ESTIMATES, not measurements)")
        lines += [f"  {row['artifact']}: {estimate_line(row)}" for row in rows if row["device"] == device.name]
        bandwidth = next((r["bandwidth"] for r in rows if r["device"] == device.name and "bandwidth" in r), None)
        if bandwidth:
            lines.append(f"  bandwidth: {bandwidth}; a language model's peak memory is {MEMORY_FLOOR}")
    return "\n".join(lines)
