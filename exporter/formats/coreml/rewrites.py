"""Rewrites applied to the traced program before coremltools converts it, and before the Core ML
preflight judges it (the same program): ops transformers' attention-mask code emits that coremltools
has no converter for, expressed in ops it converts."""

from __future__ import annotations

from common.quiet import silenced


def _diff(x, n: int = 1, dim: int = -1, prepend=None, append=None):
    import torch

    parts = [t for t in (prepend, x, append) if t is not None]
    x = torch.ops.aten.cat.default(parts, dim) if len(parts) > 1 else x
    for _ in range(n):
        length = x.shape[dim]
        x = torch.ops.aten.sub.Tensor(torch.ops.aten.slice.Tensor(x, dim, 1, length),
                                      torch.ops.aten.slice.Tensor(x, dim, 0, length - 1))
    return x


def _decomposition_table() -> dict:
    """Rewrites for ops transformers' attention-mask code emits that coremltools has no converter
    for: torch's own decompositions where it has one, else the same computation in ops it converts."""
    import torch
    from torch._decomp import get_decompositions

    aten = torch.ops.aten
    table = get_decompositions([aten.new_ones.default])
    table[aten.alias.default] = aten.clone.default  # an alias of a value that is never written: a copy
    table[aten.__and__.Tensor] = aten.bitwise_and.Tensor
    table[aten.__or__.Tensor] = aten.bitwise_or.Tensor
    table[aten.diff.default] = _diff
    table[aten.where.ScalarOther] = lambda c, x, other: aten.where.self(c, x, aten.full_like.default(x, other))
    table[aten.where.ScalarSelf] = lambda c, value, y: aten.where.self(c, aten.full_like.default(y, value), y)
    return table


def decomposed(program):
    """The program coremltools converts, and the preflight checks: the same one."""
    with silenced():
        return program.run_decompositions(_decomposition_table())


