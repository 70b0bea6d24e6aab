"""A weight plan's codes written into a Core ML program as they are: each planned weight constant becomes
constexpr_blockwise_shift_scale (iOS18: `scale * (data - offset)`, per block along the input dimension), and
read_codes gives them back (the test that every format holds the plan's codes reads them this way).

    symmetric blocks      data int4/int8 = code - 2**(bits - 1), no offset
    uint8 zero points     data uint4/uint8 = code, offset the same type (whole codes)
    float zero points     data uint4 = code, offset float16 (GGUF Q4_1's minimum, as an offset in steps)

Scales are float16, as the program computes. A block must divide the input dimension (Core ML has no padding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import ConversionError
from exporter.quant.plan import QuantizedWeight


def _parameters(weight: QuantizedWeight) -> dict[str, np.ndarray]:
    from coremltools.converters.mil.mil import types

    scheme = weight.scheme
    codes = weight.codes.numpy()
    rows, columns = codes.shape
    if columns % scheme.block_size:
        raise ConversionError(f"Core ML blocks must divide the input dimension: {columns} columns in blocks of "
                              f"{scheme.block_size}; choose a block_size that divides {columns}")
    four = scheme.bits == 4
    scale = weight.scales.numpy().astype(np.float16).reshape(rows, -1)
    if scheme.symmetric:
        data = (codes.astype(np.int16) - 2 ** (scheme.bits - 1)).astype(types.np_int4_dtype if four else np.int8)
        return {"data": data, "scale": scale}
    unsigned = types.np_uint4_dtype if four else np.uint8
    zero_points = weight.zero_points.numpy().reshape(rows, -1)
    offset = zero_points.astype(np.float16) if scheme.float_zero_points else zero_points.astype(unsigned)
    return {"data": codes.astype(unsigned), "scale": scale, "offset": offset}


def write_plan(model: Any, weights: dict[str, QuantizedWeight]) -> Any:
    """The MLModel with each named float constant replaced by its plan's blocks (one pass over the program)."""
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.helper import block_context_manager
    from coremltools.models.utils import _apply_graph_pass  # how coremltools' own linear_quantize_weights applies

    class WritePlan(AbstractGraphPass):
        def apply(self, prog: Any) -> None:
            replace(prog.functions["main"])

    @block_context_manager
    def replace(block: Any) -> None:
        for op in list(block.operations):
            if op.op_type != "const" or op.name not in weights:
                continue
            shape = tuple(op.outputs[0].shape)
            if shape != tuple(weights[op.name].codes.shape):
                raise ConversionError(f"Core ML weight {op.name} is {shape}, its plan "
                                      f"{tuple(weights[op.name].codes.shape)}")
            blocks = mb.constexpr_blockwise_shift_scale(**_parameters(weights[op.name]), before_op=op,
                                                        name=f"{op.name}_blocks")
            block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=blocks,
                                               no_check_var_types=True)
            block.remove_ops([op])
            written.add(op.name)

    written: set[str] = set()
    compressed = _apply_graph_pass(model, WritePlan())
    if missing := sorted(set(weights) - written):
        raise ConversionError(f"the Core ML program has no weight constant(s) {', '.join(missing[:3])}")
    return compressed


def read_codes(package: Path) -> dict[str, dict[str, np.ndarray]]:
    """{weight constant: {"codes" [N, K] uint8, "scales" [N, blocks], "zero_points" [N, blocks]}}, as stored."""
    from validators.mlprogram.reader import read_mlpackage

    found = {}
    for op in read_mlpackage(package).main.operations:
        if op.type != "constexpr_blockwise_shift_scale" or not op.outputs[0][0].endswith("_blocks"):
            continue
        values = {name: np.asarray(op.inputs[name][0] if name in op.inputs else op.attributes[name])
                  for name in ("data", "scale", "offset") if name in op.inputs or name in op.attributes}
        data, scales = values["data"], values["scale"].astype(np.float32)
        if data.dtype.kind == "i":  # symmetric: signed codes around the middle; 8-bit blocks reach +-127
            middle = 8 if int(np.abs(data.astype(np.int16)).max(initial=0)) <= 8 else 128
            codes, zero_points = data.astype(np.int16) + middle, np.full(scales.shape, float(middle), np.float32)
        else:
            codes, zero_points = data.astype(np.int16), values["offset"].astype(np.float32)
        found[op.outputs[0][0].removesuffix("_blocks")] = {"codes": codes.astype(np.uint8), "scales": scales,
                                                          "zero_points": zero_points}
    return found

