"""The weight plan's codes in a LiteRT program: ai-edge-quantizer lays the quantized tensors out (block-wise int4,
channel-wise int8, the flatbuffer's quantization details) and this algorithm hands it the plan's codes and scales
instead of its own rounding.

litert-torch keeps every linear's weight as it is ([out, in] float32), so a tensor's bytes name the plan that is
its own (`fingerprint`); a weight no plan matches is rounded to nearest by ai-edge-quantizer and counted. LiteRT's
blocks are symmetric (no zero-point tensor) and store their scales as float16 rounded to bfloat16's precision:
the codes are the plan's, the scales the plan's within a 2**-9 relative step."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from exporter.quant.plan import QuantizedWeight

_plans: dict[bytes, QuantizedWeight] = {}  # the plans of the program being quantized, by fingerprint
_written: dict[bytes, QuantizedWeight] = {}
_rounded: set[bytes] = set()  # weights no plan matched, rounded by ai-edge-quantizer
_floats: set[bytes] = set()  # weights left float with their operator (a rotation's: exporter/quant/rotate.py)


def fingerprint(weight: Any) -> bytes:
    """A float32 weight's identity: its shape and a hash of its bytes."""
    array = np.ascontiguousarray(np.asarray(weight, dtype=np.float32))
    return repr(array.shape).encode() + hashlib.sha256(array.tobytes()).digest()


def _params(op_info: Any, tensor_config: Any, tensor_content: Any = None, tensor_qsv: Any = None) -> Any:
    """ai-edge-quantizer's get_tensor_quant_params: the plan's codes where the tensor is a planned weight."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import naive_min_max_quantize

    key = None if tensor_content is None else fingerprint(tensor_content)
    if key not in _plans:
        if key is not None:
            _rounded.add(key)
        return naive_min_max_quantize.get_tensor_quant_params(op_info, tensor_config, tensor_content, tensor_qsv)
    plan = _written[key] = _plans[key]
    bits, (rows, columns) = plan.scheme.bits, plan.codes.shape
    if not plan.scheme.symmetric:
        raise ValueError("LiteRT's blocks are symmetric: an asymmetric plan runs as its symmetric part plus offsets")
    block = plan.scheme.block_size if plan.scheme.block_size < columns else 0  # one block per row: channel-wise
    scale = plan.scales.numpy().astype(np.float32).reshape(rows, -1)
    return qtyping.UniformQuantParams(
        num_bits=bits, quantized_dimension=0, scale=scale, zero_point=np.zeros(scale.shape, np.int32),
        symmetric=True, block_size=block,
        quantized_data=plan.signed_codes().numpy())


def _materialize(function: Any, op_info: Any, graph_info: Any, *args: Any, **kwargs: Any) -> Any:
    """ai-edge-quantizer's materialization of a fully connected or lookup operator with the plan's codes; one
    whose weight is in `_floats` is left float, inputs and all (ai-edge-quantizer leaves an operator whose weight
    is below min_weight_elements as it is)."""
    import dataclasses
    import sys

    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

    weight = graph_info.subgraph_tensors[op_info.op.inputs[1]] if graph_info and len(op_info.op.inputs) > 1 else None
    data = None if weight is None else flatbuffer.get_tensor_data(weight, graph_info.buffers)
    if data is not None and data.dtype == np.float32 and fingerprint(data) in _floats:
        config = dataclasses.replace(op_info.op_quant_config, min_weight_elements=sys.maxsize)
        op_info = dataclasses.replace(op_info, op_quant_config=config)
    return function(_params, op_info, graph_info, *args, **kwargs)


@contextlib.contextmanager
def _planned(plans: dict[bytes, QuantizedWeight], floats: list[Any]) -> Iterator[None]:
    """ai-edge-quantizer's min/max algorithm with `_params` as its weight rounding while the block runs (its recipe
    takes only the algorithms it names, so the plan stands in for min/max, which it falls back to)."""
    import functools

    from ai_edge_quantizer import algorithm_manager, qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import common_quantize

    key, mode = algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT, qtyping.QuantizeMode
    materialize = {qtyping.TFLOperationName.FULLY_CONNECTED: common_quantize.materialize_fc_conv,
                   qtyping.TFLOperationName.EMBEDDING_LOOKUP: common_quantize.materialize_embedding_lookup}
    own = {op: [algorithm_manager.get_init_qsv_func(key, op),
                algorithm_manager.get_quantization_func(key, op, mode.CALIBRATE),
                algorithm_manager.get_quantization_func(key, op, mode.MATERIALIZE),
                algorithm_manager.get_update_qsv_func(key, op)] for op in materialize}
    _plans.clear(), _written.clear(), _rounded.clear(), _floats.clear()
    _plans.update(plans)
    _floats.update(fingerprint(w) for weight in floats for w in (weight, np.asarray(weight).T))
    try:
        for op, function in materialize.items():
            init, calibrate, _, update = own[op]
            algorithm_manager.register_quantized_op(key, op, init, calibrate, functools.partial(_materialize, function),
                                                    update)
        yield
    finally:
        for op, functions in own.items():
            algorithm_manager.register_quantized_op(key, op, *functions)
        _plans.clear(), _floats.clear()


def quantize(program: Path, out: Path, bits: int, granularity: Any, plans: dict[bytes, QuantizedWeight],
             floats: list[Any] = ()) -> int:
    """ai-edge-quantizer's dynamic recipe (int8 activations per call) on every fully connected and lookup weight of
    `program`, each planned one with its plan's codes, an operator whose weight is one of `floats` left float.
    Returns how many weights no plan matched (rounded to nearest by ai-edge-quantizer); a plan that reaches no
    weight of the program is an error."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    from exporter.errors import ConversionError
    from exporter.formats.tflite.quantize import quiet

    manager = recipe_manager.RecipeManager()
    for op in (qtyping.TFLOperationName.FULLY_CONNECTED, qtyping.TFLOperationName.EMBEDDING_LOOKUP):
        manager.add_dynamic_config(regex=".*", operation_name=op, num_bits=bits, granularity=granularity)
    with quiet(), _planned(plans, floats):
        q = quantizer.Quantizer(str(program))
        q.load_quantization_recipe(manager.get_quantization_recipe())
        q.quantize().export_model(str(out), overwrite=True)
        missed, rounded = len(plans) - len(_written), len(_rounded)
    if missed:
        raise ConversionError(f"{missed} of {len(plans)} planned weights were not found in the LiteRT program "
                              "(litert-torch changed their values); rerun with --debug and report it")
    return rounded


def read_codes(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{tensor name: codes (unsigned, as the plan holds them), scales} of every int4/int8 weight in a .tflite."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

    model = flatbuffer.read_model(str(path))
    found = {}
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            bits = {17: 4, 9: 8}.get(tensor.type)  # TensorType INT4, INT8
            data = model.buffers[tensor.buffer].data
            if bits is None or data is None or tensor.quantization is None:
                continue
            rows, columns = tensor.shape
            raw = np.frombuffer(bytes(data), np.uint8 if bits == 4 else np.int8)
            if bits == 4:  # two codes a byte, the first in the low nibble
                signed = np.stack([raw & 0x0F, raw >> 4], -1).reshape(-1)[:rows * columns].astype(np.int16)
                signed = np.where(signed > 7, signed - 16, signed)
            else:
                signed = raw.astype(np.int16)
            details = tensor.quantization.details
            if details is not None:  # block-wise: a float16 scales tensor
                scales_tensor = graph.tensors[details.scales]
                scales = np.frombuffer(bytes(model.buffers[scales_tensor.buffer].data), np.float16)
            else:
                scales = np.asarray(tensor.quantization.scale, np.float32)
            found[tensor.name.decode()] = {"codes": (signed + 2 ** (bits - 1)).reshape(rows, columns).astype(np.uint8),
                                           "scales": scales.astype(np.float32).reshape(rows, -1)}
    return found

