"""Per-layer blame and auto precision for ExecuTorch int8 (static, or dynamic: activations quantized at run time).

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
from exporter.diagnosis.contract import Layer, Progress, feeding_chain
from exporter.formats.executorch.quantize import inside, layer_nodes, quantized_module
from exporter.trace import TracedModel

ALONE_BY = "pytorch, PT2E fake quantization of that layer alone"
_QDQ = ("quantize_per_", "dequantize_per_", "choose_qparams")


def _module_nodes(graph_module: torch.fx.GraphModule, paths: list[str]) -> dict[str, tuple[str, str]]:
    """Module path -> (the name of the layer's last computing node, its class name), in graph order. The
    last node includes the BatchNorm / ReLU the quantizer fuses with it: PT2E folds a BatchNorm into the
    conv, so the conv's own output is comparable with the float program's only after them."""
    order = {node.name: k for k, node in enumerate(graph_module.graph.nodes)}
    found = []
    for path in paths:
        names = [n for n in layer_nodes(graph_module.graph, path) if not any(part in n for part in _QDQ)]
        own = [n for n in graph_module.graph.nodes if n.name in names and inside(n, [path])]
        if own:
            kind = list(own[0].meta["nn_module_stack"].values())[-1][1]
            found.append((order[own[0].name], path, max(names, key=order.__getitem__),
                          getattr(kind, "__name__", str(kind).rpartition(".")[2])))
    return {path: (last, kind) for _, path, last, kind in sorted(found)}


def _feeding_nodes(graph: torch.fx.Graph, modules: list[str], weighted: set[str]) -> list[str]:
    """The non-weighted nodes feeding these modules' inputs, back to the previous weighted module (a Mul
    between two layers is annotated on its own, and its int8 output is what the kept layer would read)."""
    producers = {n.name: n for n in graph.nodes if n.op == "call_function"}
    entries = [a.name for n in graph.nodes if inside(n, modules) for a in n.all_input_nodes if not inside(a, modules)]
    return feeding_chain(entries, producers, lambda n: inside(n, weighted), lambda n: n.name,
                         lambda n: [a.name for a in n.all_input_nodes])


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
    """The diagnosis stage's view of an ExecuTorch int8 variant, static or `dynamic`."""

    def __init__(self, traced: TracedModel, batches: list[dict], relower: Callable[..., None], dynamic: bool = False):
        self.traced, self.batches, self.relower, self.dynamic = traced, batches, relower, dynamic
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
        _, accumulated = module_values(quantized_module(self.traced, self.batches, self.dynamic), paths, feeds, batch)
        rows = []
        for path in paths:
            alone = quantized_module(self.traced, self.batches, self.dynamic, only=path)
            alone_outputs, alone_layer = module_values(alone, [path], feeds, batch)
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
        reference = self.traced.program.module()
        chain = _feeding_nodes(reference.graph, kept, set(self._layers(reference)))
        converted = quantized_module(self.traced, self.batches, self.dynamic, keep_float=kept, float_nodes=chain)
        self.relower(torch.export.export(converted, self.traced.example_inputs, strict=False), out)
        return kept

    def record_kept(self, quantization: dict | None, kept: list[str]) -> dict | None:
        return {**(quantization or {}), "kept_float": kept}

