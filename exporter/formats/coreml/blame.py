"""Per-layer blame for weight-compressed Core ML variants (8-bit linear, 6- and 4-bit palettes), and
automatic mixed precision (layers kept uncompressed), run with edgeport's MIL interpreter, so it
works without a Mac.

The reference is the fp32 ML Program; a layer alone is the fp16 program with only that layer's
weight compressed (coremltools' op_name_configs). Weighted ops of the fp32, fp16 and compressed
programs are paired in program order: coremltools names variables differently per compute
precision (`linear` vs `linear_0_cast_fp16`), but converts the same graph into the same op order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.batching import run_batched, sample_count
from exporter.diagnosis import blame
from exporter.diagnosis.blame import BlameRow
from exporter.diagnosis.contract import Layer, Progress
from exporter.formats.coreml.rewrites import decomposed

# op type -> its weight inputs; a recurrent op's input and recurrent weights are a layer each (the first LSTM
# layer's input weights, reading a speaker encoder's mel power spectrum, are what 8 bits cannot hold)
WEIGHT_INPUTS = {"conv": ("weight",), "conv_transpose": ("weight",), "linear": ("weight",), "matmul": ("y",),
                 "lstm": ("weight_ih", "weight_hh", "weight_ih_back", "weight_hh_back"),
                 "gru": ("weight_ih", "weight_hh"), "rnn": ("weight_ih", "weight_hh")}


@dataclass(frozen=True)
class WeightedOp:
    type: str
    output: str
    weight: str  # the variable (a const or constexpr op's output) holding the weight
    compressed: bool  # the weight comes from a constexpr_* op (decompressed at load time)
    role: str = "weight"  # the op's input it is bound to (weight_ih, weight_hh of a recurrent op)


def weighted_ops(package: Path) -> list[WeightedOp]:
    from validators.mlprogram.reader import read_mlpackage

    operations = read_mlpackage(package).main.operations
    producers = {name: op for op in operations for name, _ in op.outputs}
    found = []
    for op in operations:
        for role in WEIGHT_INPUTS.get(op.type, ()):
            bound = op.inputs.get(role, [])
            producer = producers.get(bound[0]) if bound and isinstance(bound[0], str) else None
            if producer is not None and (producer.type == "const" or producer.type.startswith("constexpr_")):
                found.append(WeightedOp(op.type, op.outputs[0][0], bound[0], producer.type.startswith("constexpr_"),
                                        role))
    return found


def module_paths(program, module, ops: list[WeightedOp]) -> list[str]:
    """The PyTorch module of each weighted op of the fp32 program (converted from `program`, the
    decomposed torch.export program, whose node names coremltools keeps): the weight's parameter
    name first; else the nearest node at or above the op's output node inside a module owning a
    weight matrix (a BatchNorm folded into a conv names the conv's output, the conv owns the weight)."""
    owners = set(blame.weight_matrices(module))
    parameters = program.graph_signature.inputs_to_parameters
    nodes = {node.name: node for node in program.graph.nodes}
    paths = []
    for op in ops:
        owner = parameters.get(op.weight, "").rpartition(".")[0]
        if owner not in owners:
            owner, queue, seen = "", [nodes[op.output]] if op.output in nodes else [], set()
            while queue and not owner:
                node = queue.pop(0)
                stack = list(node.meta.get("nn_module_stack", {}).values())
                if stack and stack[-1][0] in owners:
                    owner = stack[-1][0]
                seen.add(node.name)
                queue += [n for n in node.all_input_nodes if n.name not in seen]
        paths.append(owner)
    return paths


def variable_values(package: Path, names: list[str], feeds: dict, batch: int | None) -> tuple[dict, list[np.ndarray]]:
    """The named variables and the program's outputs over all samples, as float32."""
    from validators.mlprogram.interpreter import Interpreter

    interpreter = Interpreter.load(package)

    def run(chunk: dict) -> list[np.ndarray]:
        outputs, kept = interpreter.run_keeping(chunk, names)
        return outputs + kept

    values = [v.astype(np.float32) for v in run_batched(run, feeds, batch)]
    n_outputs = len(values) - len(names)
    return dict(zip(names, values[n_outputs:], strict=True)), values[:n_outputs]


Compress = Callable[..., None]  # (out, only=weights) or (out, keep_float=weights): write a compressed package


def quantized_layers(fp32: Path, artifact: Path, modules: list[str], fp32_ops: list[WeightedOp],
                     artifact_ops: list[WeightedOp], indices: list[int]) -> list:
    """Each compressed layer's weight before (the fp32 program's const) and after (the artifact's
    constexpr decompressed), for exporter.diagnosis.alone: compression is weight-only."""
    from exporter.diagnosis.alone import QuantizedLayer
    from validators.mlprogram.interpreter import Interpreter

    before = Interpreter.load(fp32).constant_values([fp32_ops[i].weight for i in indices])
    after = Interpreter.load(artifact).constant_values([artifact_ops[i].weight for i in indices])
    return [QuantizedLayer(modules[i], before[fp32_ops[i].weight].astype(np.float32),
                           after[artifact_ops[i].weight].astype(np.float32), None) for i in indices]


def blame_layers(fp32: Path, base: Path, artifact: Path, traced, compress: Compress, feeds: dict,
                 batch: int | None, scratch: Path) -> list[BlameRow]:
    fp32_ops, base_ops, artifact_ops = weighted_ops(fp32), weighted_ops(base), weighted_ops(artifact)
    if not len(fp32_ops) == len(base_ops) == len(artifact_ops):
        return []
    compressed = [i for i, op in enumerate(artifact_ops) if op.compressed]
    if not compressed:
        return []
    modules = module_paths(decomposed(traced.program), traced.loaded.module, fp32_ops) \
        if traced.program is not None else [""] * len(fp32_ops)
    reference, reference_outputs = variable_values(fp32, [fp32_ops[i].output for i in compressed], feeds, batch)
    accumulated, _ = variable_values(artifact, [artifact_ops[i].output for i in compressed], feeds, batch)
    in_pytorch = blame.alone_in_pytorch(
        traced, quantized_layers(fp32, artifact, modules, fp32_ops, artifact_ops, compressed), feeds)
    alone_path = scratch / "blame-one-layer.mlpackage"
    rows = []
    for i, measured in zip(compressed, in_pytorch, strict=True):
        alone_by = blame.ALONE_IN_PYTORCH
        if measured is None:  # measured with the interpreter: the fp16 program compressed at this layer only
            compress(alone_path, only=[base_ops[i].weight])
            alone, alone_outputs = variable_values(alone_path, [artifact_ops[i].output], feeds, batch)
            measured = blame.alone_from_values(reference[fp32_ops[i].output], alone[artifact_ops[i].output],
                                               reference_outputs, alone_outputs)
            alone_by = blame.ALONE_IN_ARTIFACT
        # a recurrent op's weights are several layers of one op (its gates reordered: no module found by value)
        module = modules[i] or (f"{artifact_ops[i].output}.{artifact_ops[i].role}"
                                if len(WEIGHT_INPUTS[artifact_ops[i].type]) > 1 else "")
        layer = Layer(artifact_ops[i].output, artifact_ops[i].type, module, fp32_ops[i].output,
                      quantized_tensor=artifact_ops[i].output, weight=base_ops[i].weight)
        rows.append(blame.blame_row(layer, reference_layer=reference[fp32_ops[i].output],
                                    accumulated_layer=accumulated[artifact_ops[i].output], alone=measured,
                                    alone_by=alone_by, samples=sample_count(feeds)))
    return blame.most_harmful_first(rows)


class CoremlLayerQuantizer:
    """The diagnosis stage's view of a weight-compressed Core ML variant: the fp16 program compressed
    one weight at a time for the blame table, or with some weights left uncompressed (fp16)."""

    def __init__(self, fp32: Path, base: Path, traced, compress: Compress, scratch: Path):
        self.fp32, self.base, self.traced, self.compress, self.scratch = fp32, base, traced, compress, scratch
        self.weighted_layers = 0  # known once the artifact's compressed layers are read

    def blame(self, out: Path, feeds: dict[str, np.ndarray], progress: Progress) -> list[BlameRow]:
        progress("per-layer blame with the MIL interpreter")
        rows = blame_layers(self.fp32, self.base, out, self.traced, self.compress, feeds, self.traced.batch,
                            self.scratch)
        self.weighted_layers = len(rows)
        return rows

    def keep_float(self, rows: list[BlameRow], out: Path) -> list[str]:
        weights = sorted(row.layer.weight for row in rows)
        self.compress(out, keep_float=weights)
        return weights

    def record_kept(self, quantization: dict | None, kept: list[str]) -> dict | None:
        return {**(quantization or {}), "kept_uncompressed": kept}
