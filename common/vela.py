"""Arm Ethos-U: compile an int8 .tflite with vela (ethos-u-vela) and read its own figures. A compiler
both stages use: the exporter writes the compiled model as an artifact, the validator compiles again
for the report's figures so `edgeport validate DIR` needs nothing but the directory.

Everything here is vela's estimate for the configured accelerator, not a measurement. Operators
vela leaves on the CPU are read from the compiled flatbuffer itself (every op that is not the
ethos-u custom op), so the list names the real TFLite operator and its output tensor."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common.errors import EdgeportError

_COUNTS = re.compile(r"^(CPU|NPU) operators = (\d+)", re.MULTILINE)


class VelaError(EdgeportError):
    """vela refused the model: the exporter reports it as a conversion failure, the validator as an artifact's."""


@dataclass(frozen=True)
class VelaResult:
    compiled: Path
    summary: dict


def _builtin_names() -> dict[int, str]:
    from ethosu.vela.tflite.BuiltinOperator import BuiltinOperator

    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def _cpu_operators(compiled: Path) -> list[dict]:
    from ethosu.vela.tflite.Model import Model

    model = Model.GetRootAsModel(compiled.read_bytes(), 0)
    names = _builtin_names()
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            custom = code.CustomCode()
            if custom is not None and custom.decode() == "ethos-u":
                continue
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            kind = custom.decode() if custom is not None else names.get(builtin, f"builtin {builtin}")
            tensor = graph.Tensors(op.Outputs(0)).Name().decode() if op.OutputsLength() else ""
            ops.append({"op": kind, "output": tensor})
    return ops


def compile_with_vela(tflite: Path, out_dir: Path, accelerator: str, system_config: str, memory_mode: str,
                      compiled_name: str) -> VelaResult:
    """Run vela; return the compiled .tflite (renamed to compiled_name) and the summary figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())",
               str(tflite), "--accelerator-config", accelerator, "--system-config", system_config,
               "--memory-mode", memory_mode, "--output-dir", str(out_dir)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise VelaError(f"vela could not compile {tflite.name} for {accelerator} ({last[:300]}); "
                            "Ethos-U needs a full-integer int8 model")
    compiled = out_dir / f"{tflite.stem}_vela.tflite"
    csv_path = next(out_dir.glob(f"{tflite.stem}_summary_*.csv"))
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f))
    csv_path.unlink()
    final = out_dir / compiled_name
    compiled.replace(final)
    counts = {kind: int(n) for kind, n in _COUNTS.findall(proc.stdout)}
    npu_ops, cpu_ops = counts.get("NPU", 0), counts.get("CPU", 0)
    total = npu_ops + cpu_ops
    summary = {
        "compiler": "vela", "estimates": "vela's static estimates for the configured NPU, not measurements",
        "accelerator": row["accelerator_configuration"], "system_config": row["system_config"],
        "memory_mode": row["memory_mode"], "clock_hz": float(row["core_clock"]),
        "npu_operators": npu_ops, "cpu_operators": cpu_ops,
        "npu_op_coverage": npu_ops / total if total else 0.0,
        "cpu_fallback": _cpu_operators(final),
        "sram_kib": float(row["sram_memory_used"]),
        "flash_kib": float(row["off_chip_flash_memory_used"]) + float(row["on_chip_flash_memory_used"]),
        "macs": int(float(row["nn_macs"])),
        "cycles": int(float(row["cycles_total"])),
        "inference_ms_estimate": float(row["inference_time"]) * 1000.0,
        "compiled": compiled_name,
    }
    return VelaResult(final, summary)
