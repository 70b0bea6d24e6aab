"""Per-layer blame and auto precision for ExecuTorch static int8.

PT2E quantizes by module name, so a layer alone is the traced module with only that module quantized,
and keeping layers in float is a filter on the whole-model quantizer. The blame figures are measured in
PyTorch on PT2E's fake-quantized modules (quantize/dequantize around float ops: the arithmetic the XNNPACK
int8 kernels run), which also give every layer's intermediate value; auto precision then re-lowers the
.pte with the kept layers float, and every candidate is judged by the ExecuTorch runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from common.batching import run_batched, sample_count
from exporter.diagnosis import blame
from exporter.diagnosis.blame import BlameRow
from exporter.diagnosis.contract import Layer, Progress
from exporter.formats.executorch.quantize import quantized_module
from exporter.trace import TracedModel

ALONE_BY = "pytorch, PT2E fake quantization of that layer alone"
_QDQ = ("quantize_per_", "dequantize_per_", "choose_qparams")


def _module_nodes(graph_module: torch.fx.GraphModule, paths: list[str]) -> dict[str, tuple[str, str]]:
    """Module path -> (the name of the last computing node made inside it, its class name), in graph
    order, skipping the quantize/dequantize pairs PT2E inserts."""
    found: dict[str, tuple[str, str]] = {}
    for node in graph_module.graph.nodes:
        stack = list(node.meta.get("nn_module_stack", {}).values())
        if node.op == "call_function" and stack and stack[-1][0] in paths \
                and not any(part in str(node.target) for part in _QDQ):
            kind = stack[-1][1]
            found[stack[-1][0]] = (node.name, getattr(kind, "__name__", str(kind).rpartition(".")[2]))
    return found


class _Capture(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, names: set[str]):
        super().__init__(module)
        self.names, self.values = names, {}

    def run_node(self, node):
        value = super().run_node(node)
        if node.name in self.names:
            self.values[node.name] = value
        return value


def module_values(graph_module: torch.fx.GraphModule, paths: list[str], feeds: dict[str, np.ndarray],
                  batch: int | None) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The module's outputs and each named layer's output value over all samples."""
    nodes = {path: name for path, (name, _) in _module_nodes(graph_module, paths).items()}
    order = [p for p in paths if p in nodes]

    def run(chunk: dict) -> list[np.ndarray]:
        capture = _Capture(graph_module, set(nodes.values()))
        with torch.no_grad():
            outputs = capture.run(*(torch.from_numpy(np.ascontiguousarray(v)) for v in chunk.values()))
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [o.detach().float().numpy() for o in outputs] + \
            [capture.values[nodes[p]].detach().float().numpy() for p in order]

    values = run_batched(run, feeds, batch)
    n_outputs = len(values) - len(order)
    return values[:n_outputs], dict(zip(order, values[n_outputs:], strict=True))


class ExecutorchLayerQuantizer:
    """The diagnosis stage's view of an ExecuTorch static int8 variant."""

    def __init__(self, traced: TracedModel, batches: list[dict], relower: Callable[..., None]):
        self.traced, self.batches, self.relower = traced, batches, relower
        self.weighted_layers = 0

    def _layers(self, reference: torch.fx.GraphModule) -> dict[str, str]:
        """Modules owning a weight matrix or kernel that compute in the traced program -> their class, in
        graph order."""
        owners = blame.weight_matrices(self.traced.loaded.module if self.traced.loaded.kind == "module" else reference)
        return {path: kind for path, (_, kind) in _module_nodes(reference, sorted(owners)).items()}

    def blame(self, out: Path, feeds: dict[str, np.ndarray], progress: Progress) -> list[BlameRow]:
        reference = self.traced.program.module()
        kinds = self._layers(reference)
        paths = list(kinds)
        progress(f"per-layer blame over {len(paths)} weighted layers (PT2E fake quantization in PyTorch)")
        batch, samples = self.traced.batch, sample_count(feeds)
        reference_outputs, reference_layers = module_values(reference, paths, feeds, batch)
        _, accumulated = module_values(quantized_module(self.traced, self.batches), paths, feeds, batch)
        rows = []
        for path in paths:
            alone_outputs, alone_layer = module_values(quantized_module(self.traced, self.batches, only=path),
                                                       [path], feeds, batch)
            if path not in alone_layer or path not in accumulated:
                continue
            measured = blame.alone_from_values(reference_layers[path], alone_layer[path], reference_outputs,
                                               alone_outputs)
            layer = Layer(path, kinds[path], path, path)
            rows.append(blame.blame_row(layer, reference_layer=reference_layers[path],
                                        accumulated_layer=accumulated[path], alone=measured, alone_by=ALONE_BY,
                                        samples=samples))
        self.weighted_layers = len(rows)
        return blame.most_harmful_first(rows)

    def keep_float(self, rows: list[BlameRow], out: Path) -> list[str]:
        kept = sorted(row.layer.module for row in rows)
        converted = quantized_module(self.traced, self.batches, keep_float=kept)
        self.relower(torch.export.export(converted, self.traced.example_inputs, strict=False), out)
        return kept

    def record_kept(self, quantization: dict | None, kept: list[str]) -> dict | None:
        return {**(quantization or {}), "kept_float": kept}

