"""ONNX graph nodes in the user's terms: which nodes are weighted layers, which PyTorch module each
came from, and which nodes must stay float for a layer to really run in float."""

from __future__ import annotations

import ast

import onnx

from exporter.diagnosis.contract import Layer, feeding_chain

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def module_paths(model: onnx.ModelProto) -> dict[str, str]:
    """Node name and output tensor name -> PyTorch module path, read from the exporter's name scopes
    (torch.export path) or from the node name (TorchScript path: /features/features.0/Conv).

    Keyed by both because graph passes keep one or the other: onnxslim renames the nodes it
    rewrites after their output tensors, BatchNorm folding keeps the conv node but takes the
    BatchNorm's output tensor."""
    paths = {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if scopes:
            parts = [s for s in ast.literal_eval(scopes) if s]
        elif node.name.startswith("/"):
            parts = [s for s in node.name.split("/") if s]
        else:
            continue
        path = parts[-2] if len(parts) >= 2 else ""
        if path:
            paths[node.name] = path
            for output in node.output:
                paths.setdefault(output, path)
    return paths


def _module_from_weight(weight: str) -> str:
    """Parameters keep their PyTorch names (encoder.layers.1.self_attn.in_proj_weight)."""
    owner, _, leaf = weight.removeprefix("p_").rpartition(".")
    return owner if owner and leaf and not leaf.isdigit() else ""


def weighted_layers(model: onnx.ModelProto, paths: dict[str, str]) -> list[Layer]:
    """Nodes of WEIGHTED_OPS with a constant weight, in graph order, with the module each came from:
    the exporter's scope, else (a node a pass fused under a new name) the weight's parameter name."""
    constants = {i.name for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in constants:
            scope = paths.get(node.name) or paths.get(node.output[0]) or ""
            owner = _module_from_weight(node.input[1])
            # a parameter name is more specific inside a module that calls a child's weights itself
            # (nn.MultiheadAttention's out_proj is scoped to self_attn)
            module = owner if owner and (not scope or owner.startswith(scope + ".")) else scope or node.name
            layers.append(Layer(node.name, node.op_type, module, node.output[0]))
    return layers


def float_island(model: onnx.ModelProto, node_name: str) -> list[str]:
    """The node and the non-weighted chain feeding its activation input (onnxruntime quantizes an
    activation at its producer too). An embedding lookup (a Gather from a constant table) ends the chain
    like a weighted node: through a transformer's residual stream the chain reaches it, and all-mpnet-base-v2
    kept its 94 MB table float for one kept linear (int8 ONNX 195 -> 274 MB)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    constants = {i.name for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)

    def ends_chain(n) -> bool:
        return n.op_type in WEIGHTED_OPS or n is node or n.op_type == "Gather" and n.input[0] in constants

    chain = feeding_chain([node.input[0]], producers, ends_chain, lambda n: n.name,
                          lambda n: [i for i in n.input if i and i not in constants])
    return [node_name, *chain]
