"""What each operator of a traced model costs, counted once on the torch.export graph for every format: its
multiply-accumulates and the elements it reads and writes (weights apart from activations). The device
estimate (validators/estimate.py) prices these at each variant's element sizes, operator by operator (a roofline
summed over the graph). Counted at the traced example batch."""

from __future__ import annotations

import math
from typing import Any

# aten ops whose MACs are counted: output elements x the reduction length
_CONV = ("convolution", "conv1d", "conv2d", "conv3d", "_convolution")
_LINEAR = ("linear", "addmm", "mm", "bmm", "matmul", "baddbmm")


def _dims(shape: Any) -> list[int]:
    return [int(d) if isinstance(d, int) else int(getattr(d.node, "hint", None) or 1) for d in shape]


def _numel(value: Any) -> int:
    return math.prod(_dims(value.shape)) if hasattr(value, "shape") else 0


def _macs(name: str, node: Any, args: list[Any]) -> int:
    out = node.meta.get("val")
    if not hasattr(out, "shape") or not args or not hasattr(args[0], "shape"):
        return 0
    if name in _CONV and len(args) > 1 and hasattr(args[1], "shape"):
        weight = _dims(args[1].shape)  # [out, in / groups, *kernel]
        return _numel(out) * math.prod(weight[1:])
    if name in _LINEAR:
        first = args[1] if name in ("addmm", "baddbmm") else args[0]
        return _numel(out) * _dims(first.shape)[-1]
    if name == "scaled_dot_product_attention" and len(args) > 2:
        query, key = _dims(args[0].shape), _dims(args[1].shape)
        return 2 * math.prod(query) * key[-2]  # Q K^T and the weighted sum of V
    return 0


def op_costs(program: Any) -> dict | None:
    """{"ops": [{op, macs, weights, activations}], "macs": total} for the operators that multiply or hold weights;
    None without a torch.export program (a TorchScript source)."""
    if program is None:
        return None
    signature = program.graph_signature
    held = set(signature.inputs_to_parameters) | set(signature.inputs_to_buffers) | \
        set(getattr(signature, "inputs_to_lifted_tensor_constants", {}))
    ops = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        inputs = [a for a in node.args if hasattr(a, "meta")]
        values = [a.meta.get("val") for a in inputs]
        weights = sum(_numel(v) for a, v in zip(inputs, values, strict=True) if a.name in held)
        macs = _macs(name, node, values)
        if not macs and not weights:
            continue
        activations = sum(_numel(v) for a, v in zip(inputs, values, strict=True) if a.name not in held) + \
            _numel(node.meta.get("val"))
        ops.append({"op": name, "macs": macs, "weights": weights, "activations": activations})
    return {"ops": ops, "macs": sum(op["macs"] for op in ops),
            "counted": "torch.export graph at the traced batch: MACs of convolutions, matmuls and attention; "
                       "elements read and written per operator"}
