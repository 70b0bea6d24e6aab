"""A weight plan's codes written into an ONNX graph as they are: a MatMul over a constant weight becomes
MatMulNBits, an embedding Gather becomes GatherBlockQuantized, and read_codes gives them back (the test that
every format holds the plan's codes reads them this way).

MatMulNBits stores B as [N, blocks, block_size * bits / 8] bytes (4-bit codes two per byte, low nibble first),
scales [N * blocks], and zero points as uint8 codes (4-bit ones packed two per byte per row) or, for 4-bit
weights only, as float offsets; no zero-point input means 2**(bits - 1). GatherBlockQuantized takes uint8
zero points only (onnxruntime 1.32 refuses float ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exporter.quant.plan import QuantizedWeight, as_blocks


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [..., n] -> bytes [..., n * bits / 8]."""
    if bits == 8:
        return codes.astype(np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return packed[..., :count]
    both = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return both[..., :count]


def _arrays(weight: QuantizedWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(blocks of codes [rows, blocks, block], scales [rows, blocks], zero points or None for symmetric)."""
    import torch

    scheme = weight.scheme
    codes = as_blocks(weight.codes, scheme.block_size).to(torch.uint8).numpy()
    scales = weight.scales.numpy().astype(np.float32)
    if scheme.symmetric:
        return codes, scales, None
    zero_points = weight.zero_points.numpy().astype(np.float32)
    if scheme.float_zero_points:
        return codes, scales, zero_points
    return codes, scales, _pack(zero_points.astype(np.uint8), scheme.bits)


def matmul_nbits(model: Any, node: Any, weight: QuantizedWeight, accuracy_level: int) -> Any:
    """Replace `node` (MatMul(A, constant [K, N])) by MatMulNBits holding the plan's codes; returns the new node."""
    from onnx import helper, numpy_helper

    scheme = weight.scheme
    if scheme.bits == 8 and scheme.float_zero_points:
        raise ValueError("MatMulNBits on CPU takes float zero points for 4-bit weights only")
    rows, columns = weight.codes.shape
    codes, scales, zero_points = _arrays(weight)
    name = node.name or node.output[0]
    tensors = [numpy_helper.from_array(_pack(codes, scheme.bits), f"{name}_Q{scheme.bits}"),
               numpy_helper.from_array(scales.reshape(-1), f"{name}_scales")]
    if zero_points is not None:
        tensors.append(numpy_helper.from_array(zero_points.reshape(-1), f"{name}_zero_points"))
    model.graph.initializer.extend(tensors)
    replacement = helper.make_node("MatMulNBits", [node.input[0], *(t.name for t in tensors)], list(node.output),
                                   name=f"{name}_Q{scheme.bits}", domain="com.microsoft", K=columns, N=rows,
                                   bits=scheme.bits, block_size=scheme.block_size, accuracy_level=accuracy_level)
    replacement.metadata_props.extend(node.metadata_props)  # the module path the blame and the plan key on
    _replace(model, node, replacement)
    return replacement


def gather_block_quantized(model: Any, node: Any, weight: QuantizedWeight) -> None:
    """Replace an embedding Gather(table, ids) by GatherBlockQuantized over the plan's codes of the table."""
    from onnx import helper, numpy_helper

    scheme = weight.scheme
    if scheme.float_zero_points:
        raise ValueError("GatherBlockQuantized takes uint8 zero points only")
    rows, columns = weight.codes.shape
    codes, scales, zero_points = _arrays(weight)
    name = node.name or node.output[0]
    tensors = [numpy_helper.from_array(_pack(codes, scheme.bits).reshape(rows, -1), f"{name}_Q{scheme.bits}"),
               numpy_helper.from_array(scales, f"{name}_scales")]
    if zero_points is not None:
        tensors.append(numpy_helper.from_array(zero_points.reshape(rows, -1), f"{name}_zero_points"))
    model.graph.initializer.extend(tensors)
    inputs = [tensors[0].name, node.input[1], *(t.name for t in tensors[1:])]
    replacement = helper.make_node("GatherBlockQuantized", inputs, list(node.output), name=f"{name}_blocks",
                                   domain="com.microsoft", bits=scheme.bits, block_size=scheme.block_size,
                                   gather_axis=0, quantize_axis=1)
    replacement.metadata_props.extend(node.metadata_props)
    _replace(model, node, replacement)


def _replace(model: Any, node: Any, replacement: Any) -> None:
    nodes = model.graph.node
    index = list(nodes).index(node)
    dropped = [n for n in node.input[1:] if n]
    nodes.remove(node)
    nodes.insert(index, replacement)
    still_read = {name for n in nodes for name in n.input}
    unread = set(dropped) - still_read
    # deleted in place: rebuilding the list would copy every initializer of the model once per replaced node
    for index in reversed([i for i, init in enumerate(model.graph.initializer) if init.name in unread]):
        del model.graph.initializer[index]


def read_codes(model: Any) -> dict[str, dict[str, np.ndarray]]:
    """{MatMulNBits node name: {"codes" [N, K], "scales" [N, blocks], "zero_points" [N, blocks]}}, as stored."""
    from onnx import helper, numpy_helper

    arrays = {init.name: init for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or node.input[1] not in arrays:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits, block, rows, columns = attributes["bits"], attributes["block_size"], attributes["N"], attributes["K"]
        blocks = -(-columns // block)
        packed = numpy_helper.to_array(arrays[node.input[1]]).reshape(rows, blocks, -1)
        codes = _unpack(packed, bits, block).reshape(rows, -1)[:, :columns]
        scales = numpy_helper.to_array(arrays[node.input[2]]).reshape(rows, blocks)
        if len(node.input) > 3 and node.input[3]:
            stored = numpy_helper.to_array(arrays[node.input[3]])
            zero_points = stored.reshape(rows, blocks).astype(np.float32) if stored.dtype != np.uint8 else \
                _unpack(stored.reshape(rows, -1), bits, blocks).astype(np.float32)
        else:
            zero_points = np.full((rows, blocks), 2 ** (bits - 1), np.float32)
        found[node.name] = {"codes": codes, "scales": scales, "zero_points": zero_points}
    return found
