"""PT2E quantization with the XNNPACK quantizer: the whole model, one module alone (per-layer blame), or
all but some modules (auto precision), on the one traced program's module."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from exporter.trace import TracedModel

RECIPES = {"int8": "PT2E static int8, XNNPACK quantizer: per-channel symmetric int8 weights, int8 activations "
                   "calibrated on --calib data",
           "int8_dynamic": "PT2E dynamic int8, XNNPACK quantizer: per-channel int8 weights, activations quantized "
                           "per run"}


def inside(node: torch.fx.Node, paths: Iterable[str]) -> bool:
    """Whether the node was traced inside one of these module paths (or a child of one)."""
    stack = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
    return any(p == path or p.startswith(path + ".") for p in stack for path in paths)


# what the XNNPACK quantizer annotates together with a conv or linear (conv-bn-relu, linear-relu)
_FUSED_AFTER = ("batch_norm", "relu", "hardtanh", "getitem")


def layer_nodes(graph: torch.fx.Graph, path: str) -> set[str]:
    """The nodes of one layer as the quantizer annotates it: those traced inside the module and the
    BatchNorm / ReLU after it that another module computes (past a quantize/dequantize pair, in a graph
    already quantized)."""
    found = {n.name for n in graph.nodes if n.op == "call_function" and inside(n, [path])}
    stack = [u for n in graph.nodes if n.name in found for u in n.users if u.name not in found]
    while stack:
        node = stack.pop()
        target = str(node.target)
        if node.name in found or node.op != "call_function":
            continue
        if "quantize_per_" in target:  # quantize_per_* and dequantize_per_*
            stack.extend(node.users)
        elif any(k in target for k in _FUSED_AFTER):
            found.add(node.name)
            stack.extend(node.users)
    return found


def quantized_module(traced: TracedModel, batches: list[dict], dynamic: bool = False, only: str | None = None,
                     keep_float: Iterable[str] = (), float_nodes: Iterable[str] = ()) -> torch.fx.GraphModule:
    """The traced module after PT2E (fake-quantized: quantize/dequantize pairs around float ops, the
    arithmetic the XNNPACK int8 kernels run), calibrated on `batches` (the example inputs when none);
    the `keep_float` modules and the graph's `float_nodes` are left float."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(config)
    module = copy.deepcopy(traced.program.module())
    if only is not None:  # a conv's BatchNorm and ReLU are other modules but one partition: by node, not module
        allowed = layer_nodes(module.graph, only)
        quantizer.set_filter_function(lambda node: node.op != "call_function" or node.name in allowed)
    elif keep_float or float_nodes:
        kept, by_name = list(keep_float), set(float_nodes)
        quantizer.set_filter_function(lambda node: node.name not in by_name and not inside(node, kept))
    module = prepare_pt2e(module, quantizer)
    with torch.no_grad():
        for feeds in batches or [dict(zip(traced.loaded.input_names, traced.example_inputs, strict=True))]:
            module(*(torch.as_tensor(v) for v in feeds.values()))
    return convert_pt2e(module)
