"""A weight plan's codes written into an ONNX graph as they are: a MatMul over a constant weight becomes
MatMulNBits, an embedding Gather becomes GatherBlockQuantized, and read_codes gives them back (the test that
every format holds the plan's codes reads them this way).

MatMulNBits stores B as [N, blocks, block_size * bits / 8] bytes (4-bit codes two per byte, low nibble first),
scales [N * blocks], and zero points as uint8 codes (4-bit ones packed two per byte per row); no zero-point input
means 2**(bits - 1). Scales are stored as float16 and cast to float32 in the graph (onnxruntime folds the cast
when it loads the model): the plan's scales are float16 values, and the file is 1/2 bit per weight smaller.

Float zero points (GGUF Q4_1's "scale and minimum") are not given to MatMulNBits as float offsets: onnxruntime
1.32 then leaves its int8 kernels for float32 ones, 13-30x slower per token. A weight is `code * scale + minimum`,
so the node takes zero point 0 (its fast kernels) and the block minimums are added as a small float matmul of
the activations' block sums: `x @ W = MatMulNBits(x) + (x @ S) @ minimums`, S [K, blocks] summing each block of
x (one per input tensor, shared by q/k/v and gate/up), minimums [blocks, N] as float16.
GatherBlockQuantized takes uint8 zero points only (onnxruntime 1.32 refuses float ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exporter.quant.plan import QuantizedWeight


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
    """(blocks of codes [rows, blocks, block], scales [rows, blocks], packed zero points or None for symmetric)."""
    import torch

    scheme = weight.scheme
    rows, columns = weight.codes.shape
    # padded as uint8: as_blocks would make a float copy of every code (a 151936-token head's: 0.5 GB)
    padded = torch.nn.functional.pad(weight.codes, (0, -columns % scheme.block_size))
    codes = padded.reshape(rows, -1, scheme.block_size).numpy()
    scales = weight.scales.numpy().astype(np.float32)
    if scheme.symmetric:
        return codes, scales, None
    zero_points = weight.zero_points.numpy()
    if scheme.float_zero_points:  # zero point 0; the minimums go beside the node (see above)
        zero_points = np.zeros_like(zero_points)
    return codes, scales, _pack(zero_points.astype(np.uint8), scheme.bits)


def _half_initializer(model: Any, values: np.ndarray, name: str) -> str:
    """A float16 initializer `name`_f16 cast to the float32 tensor `name`; returns `name`."""
    from onnx import TensorProto, helper, numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(values.astype(np.float16), f"{name}_f16"))
    # first in the graph: an earlier node may read it too (a tied table's lookup reads the head's scales)
    model.graph.node.insert(0, helper.make_node("Cast", [f"{name}_f16"], [name], name=f"{name}_cast",
                                                to=TensorProto.FLOAT))
    return name


def matmul_nbits(model: Any, node: Any, weight: QuantizedWeight, accuracy_level: int) -> Any:
    """Replace `node` (MatMul(A, constant [K, N])) by MatMulNBits holding the plan's codes; returns the new node."""
    from onnx import helper, numpy_helper

    scheme = weight.scheme
    rows, columns = weight.codes.shape
    codes, scales, zero_points = _arrays(weight)
    name = f"{node.name or node.output[0]}_Q{scheme.bits}"
    packed = numpy_helper.from_array(_pack(codes, scheme.bits), f"{name}_codes")
    model.graph.initializer.append(packed)
    inputs = [node.input[0], packed.name, _half_initializer(model, scales.reshape(-1), f"{name}_scales")]
    if zero_points is not None:
        model.graph.initializer.append(numpy_helper.from_array(zero_points.reshape(-1), f"{name}_zero_points"))
        inputs.append(f"{name}_zero_points")
    outputs = list(node.output) if not scheme.float_zero_points else [f"{name}_scaled"]
    replacement = helper.make_node("MatMulNBits", inputs, outputs, name=name, domain="com.microsoft", K=columns,
                                   N=rows, bits=scheme.bits, block_size=scheme.block_size,
                                   accuracy_level=accuracy_level)
    replacement.metadata_props.extend(node.metadata_props)  # the module path the blame and the plan key on
    _replace(model, node, replacement)
    if scheme.float_zero_points:
        minimums = (-weight.zero_points * weight.scales).numpy().T  # [blocks, N]
        _half_initializer(model, minimums, f"{name}_minimums")
        sums = _block_sums(model, replacement, columns, scheme.block_size)
        index = list(model.graph.node).index(replacement)
        for offset, added in enumerate([
                helper.make_node("MatMul", [sums, f"{name}_minimums"], [f"{name}_offsets"], name=f"{name}_offsets"),
                helper.make_node("Add", [outputs[0], f"{name}_offsets"], list(node.output), name=f"{name}_add")]):
            model.graph.node.insert(index + 1 + offset, added)
    return replacement


def _block_sums(model: Any, reader: Any, columns: int, block_size: int) -> str:
    """x @ S, each block's sum of the activations x [..., blocks]: made once per input tensor, before its first
    reader."""
    from onnx import helper, numpy_helper

    activations = reader.input[0]
    sums = f"{activations}_block_sums{block_size}"
    if any(sums in n.output for n in model.graph.node):
        return sums
    summing = f"block_sums_{columns}x{block_size}"
    if not any(init.name == summing for init in model.graph.initializer):
        matrix = np.zeros((columns, -(-columns // block_size)), np.float32)
        matrix[np.arange(columns), np.arange(columns) // block_size] = 1
        model.graph.initializer.append(numpy_helper.from_array(matrix, summing))
    model.graph.node.insert(list(model.graph.node).index(reader),
                            helper.make_node("MatMul", [activations, summing], [sums], name=sums))
    return sums


def gather_block_quantized(model: Any, node: Any, weight: QuantizedWeight) -> None:
    """Replace an embedding Gather(table, ids) by GatherBlockQuantized over the plan's codes of the table."""
    from onnx import helper, numpy_helper

    scheme = weight.scheme
    if scheme.float_zero_points:
        raise ValueError("GatherBlockQuantized takes uint8 zero points only")
    rows, columns = weight.codes.shape
    codes, scales, zero_points = _arrays(weight)
    name = node.name or node.output[0]
    packed = numpy_helper.from_array(_pack(codes, scheme.bits).reshape(rows, -1), f"{name}_Q{scheme.bits}")
    model.graph.initializer.append(packed)
    inputs = [packed.name, node.input[1], _half_initializer(model, scales, f"{name}_scales")]
    if zero_points is not None:
        model.graph.initializer.append(numpy_helper.from_array(zero_points.reshape(rows, -1), f"{name}_zero_points"))
        inputs.append(f"{name}_zero_points")
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
        scales = _stored(arrays, node.input[2]).reshape(rows, blocks)
        if f"{node.name}_minimums_f16" in arrays:  # float zero points: code * scale + minimum
            zero_points = -_stored(arrays, f"{node.name}_minimums").T / scales
        elif len(node.input) > 3 and node.input[3]:
            stored = numpy_helper.to_array(arrays[node.input[3]])
            zero_points = _unpack(stored.reshape(rows, -1), bits, blocks).astype(np.float32)
        else:
            zero_points = np.full((rows, blocks), 2 ** (bits - 1), np.float32)
        found[node.name] = {"codes": codes, "scales": scales, "zero_points": zero_points}
    return found


def _stored(arrays: dict, name: str) -> np.ndarray:
    """A float32 tensor as stored: its own initializer, or the float16 one cast to it."""
    from onnx import numpy_helper

    return numpy_helper.to_array(arrays[name] if name in arrays else arrays[f"{name}_f16"]).astype(np.float32)
