"""Which operators of a lowered ExecuTorch program run in the XNNPACK delegate and which fall back to
the portable CPU kernels, by PyTorch module path, with the partitioner's own reason where it gave one."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

# Runtime assertions torch.export inserts (a symbolic size's bounds, a tensor's metadata): no computation, and
# to_edge strips most of them
RUNTIME_ASSERTIONS = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range",
                      "sym_constrain_range_for_size"}
# Graph plumbing that is not an operator of the model: never counted
_PLUMBING = {"getitem", "executorch_call_delegate", "alloc", "to_copy"} | RUNTIME_ASSERTIONS


def _op_name(node: Any) -> str:
    """aten.convolution.default -> convolution; dim_order_ops._to_dim_order_copy.default -> _to_dim_order_copy;
    an operator that mutates its input (wrapped in auto_functionalized) by the operator's own name."""
    target = node.target
    if "auto_functionalized" in str(getattr(target, "__name__", "")) and node.args:
        target = node.args[0]
    schema = getattr(target, "_schema", None)  # an operator overload: its schema names it without the overload
    if schema is not None:
        return schema.name.split("::")[-1]
    parts = str(getattr(target, "__name__", target)).replace("::", ".").split(".")
    return parts[1] if len(parts) > 2 else parts[-1] if len(parts) == 2 else parts[0]


def _module_of(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


@contextlib.contextmanager
def partitioner_reasons() -> Iterator[dict[str, str]]:
    """Collect XNNPACK's WhyNoPartition messages (node name -> reason) while the partitioner runs."""
    reasons: dict[str, str] = {}

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.msg
            node, reason = getattr(message, "node", None), getattr(message, "reason", None)
            if node is not None and reason:
                reasons.setdefault(node.name, reason)

    logger = logging.getLogger("executorch.backends.xnnpack")
    handler, level, propagate = Collect(logging.DEBUG), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the reasons go into the report, not to the console
    try:
        yield reasons
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _operators(graph: Any) -> list[Any]:
    return [n for n in graph.nodes if n.op == "call_function" and _op_name(n) not in _PLUMBING]


def coverage(edge_program: Any, reasons: dict[str, str]) -> dict:
    """Operators inside XNNPACK delegates and those left to the portable kernels (with module path and
    reason), from the lowered edge program."""
    graph_module = edge_program.graph_module
    delegated = 0
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and _op_name(node) == "executorch_call_delegate":
            lowered = getattr(graph_module, node.args[0].target)
            delegated += len(_operators(lowered.original_module.graph))
    fallback = [{"op": _op_name(n), "module": _module_of(n),
                 "reason": reasons.get(n.name, "XNNPACK has no kernel for this operator")}
                for n in _operators(graph_module.graph)]
    total = delegated + len(fallback)
    return {"delegate": "XnnpackBackend", "delegated_operators": delegated, "portable_operators": len(fallback),
            "delegated_op_coverage": round(delegated / total, 4) if total else 1.0, "portable_fallback": fallback}
