"""Read an .mlpackage into plain Python objects: the main function's inputs, its operations (with
nested blocks for control flow) and every constant as a NumPy array, weights read from weight.bin.

Only the protobuf classes shipped with coremltools are used (no Core ML framework, no macOS)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import ArtifactError

_BLOB_SENTINEL = 0xDEADBEEF

# MIL DataType enum -> (numpy dtype, bits); sub-byte types are unpacked to uint8 / int8.
MIL_DTYPES: dict[int, tuple[np.dtype, int]] = {
    1: (np.dtype(np.bool_), 8), 10: (np.dtype(np.float16), 16), 11: (np.dtype(np.float32), 32),
    12: (np.dtype(np.float64), 64), 21: (np.dtype(np.int8), 8), 22: (np.dtype(np.int16), 16),
    23: (np.dtype(np.int32), 32), 24: (np.dtype(np.int64), 64), 25: (np.dtype(np.int8), 4),
    31: (np.dtype(np.uint8), 8), 32: (np.dtype(np.uint16), 16), 33: (np.dtype(np.uint32), 32),
    34: (np.dtype(np.uint64), 64), 35: (np.dtype(np.uint8), 4), 36: (np.dtype(np.uint8), 2),
    37: (np.dtype(np.uint8), 1), 38: (np.dtype(np.uint8), 6), 39: (np.dtype(np.uint8), 3),
}
FLOAT16, FLOAT32 = 10, 11


@dataclass
class Op:
    type: str
    inputs: dict[str, list[str | np.ndarray]]  # input name -> bound values (a name or a constant)
    outputs: list[tuple[str, int | None]]  # (name, MIL dtype code or None for non-tensors)
    attributes: dict[str, np.ndarray | str]
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Block:
    inputs: list[str]
    outputs: list[str]
    operations: list[Op]


@dataclass
class Program:
    inputs: list[tuple[str, int, tuple[int, ...]]]  # (name, MIL dtype, shape)
    outputs: list[str]
    main: Block
    opset: str
    states: list[tuple[str, int, tuple[int, ...]]] = field(default_factory=list)  # iOS18 state inputs (KV caches)


def unpack_bits(raw: bytes, bits: int, count: int, signed: bool) -> np.ndarray:
    """MIL packs sub-byte values least-significant bit first."""
    bit_array = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[: count * bits]
    values = bit_array.reshape(count, bits).astype(np.int32) << np.arange(bits, dtype=np.int32)
    values = values.sum(axis=1)
    if signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
        return values.astype(np.int8)
    return values.astype(np.uint8)


class _Weights:
    def __init__(self, root: Path):
        self.root = root
        self._files: dict[str, bytes] = {}

    def read(self, file_name: str, offset: int, code: int, shape: tuple[int, ...]) -> np.ndarray:
        rel = file_name.replace("@model_path/", "")
        if rel not in self._files:
            path = self.root / rel
            if not path.is_file():
                raise ArtifactError(f"{path} is missing from the .mlpackage; re-export")
            self._files[rel] = path.read_bytes()
        data = self._files[rel]
        sentinel, _blob_dtype, size, data_offset = struct.unpack_from("<IIQQ", data, offset)
        if sentinel != _BLOB_SENTINEL or data_offset + size > len(data):
            raise ArtifactError(f"{rel}: corrupt weight blob at offset {offset}; re-export the model")
        dtype, bits = MIL_DTYPES[code]
        count = int(np.prod(shape)) if shape else 1
        raw = data[data_offset:data_offset + size]
        if bits < 8:
            return unpack_bits(raw, bits, count, signed=dtype.kind == "i").reshape(shape)
        return np.frombuffer(raw, dtype, count).reshape(shape).copy()


def _shape(value_type) -> tuple[int, ...]:
    tensor = value_type.tensorType
    return tuple(int(d.constant.size) for d in tensor.dimensions)


def _value(value, weights: _Weights) -> np.ndarray | str:
    kind = value.WhichOneof("value")
    tensor_type = value.type.tensorType
    code = tensor_type.dataType
    shape = _shape(value.type)
    if kind == "blobFileValue":
        return weights.read(value.blobFileValue.fileName, value.blobFileValue.offset, code, shape)
    immediate = value.immediateValue
    if immediate.WhichOneof("value") != "tensor":
        raise ArtifactError(f"unsupported immediate value kind {immediate.WhichOneof('value')!r} in the program")
    tensor = immediate.tensor
    field_name = tensor.WhichOneof("value")
    if field_name == "strings":
        strings = list(tensor.strings.values)
        return strings[0] if not shape else np.array(strings, dtype=object).reshape(shape)
    dtype, bits = MIL_DTYPES[code]
    if field_name == "bytes":
        raw = tensor.bytes.values
        count = int(np.prod(shape)) if shape else 1
        array = unpack_bits(raw, bits, count, dtype.kind == "i") if bits < 8 else np.frombuffer(raw, dtype, count)
    else:
        array = np.asarray(list(getattr(tensor, field_name).values)).astype(dtype)
    return array.reshape(shape) if shape else array.reshape(())


def _block(proto_block, weights: _Weights) -> Block:
    ops = []
    for op in proto_block.operations:
        inputs = {}
        for name, argument in op.inputs.items():
            bound: list[str | np.ndarray] = []
            for binding in argument.arguments:
                if binding.WhichOneof("binding") == "name":
                    bound.append(binding.name)
                else:
                    bound.append(_value(binding.value, weights))
            inputs[name] = bound
        outputs = [(o.name, o.type.tensorType.dataType if o.type.WhichOneof("type") == "tensorType" else None)
                   for o in op.outputs]
        attributes = {k: _value(v, weights) for k, v in op.attributes.items() if k != "name"}
        blocks = [_block(b, weights) for b in op.blocks]
        ops.append(Op(op.type, inputs, outputs, attributes, blocks))
    return Block([i.name for i in proto_block.inputs], list(proto_block.outputs), ops)


def read_mlpackage(path: Path) -> Program:
    from coremltools.proto import Model_pb2

    manifest_path = path / "Manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not an .mlpackage (no Manifest.json); re-export")
    try:
        manifest = json.loads(manifest_path.read_text())
        root_id = manifest["rootModelIdentifier"]
        model_rel = manifest["itemInfoEntries"][root_id]["path"]
    except (KeyError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is malformed ({exc}); re-export") from None
    data_root = path / "Data"
    spec_path = data_root / model_rel
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ArtifactError(f"{spec_path} is not a Core ML model spec ({exc}); re-export") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise ArtifactError(f"{path} is not an ML Program (it is {spec.WhichOneof('Type')}); "
                            "edgeport emits ML Programs")
    function = spec.mlProgram.functions["main"]
    weights = _Weights(spec_path.parent)
    main = _block(function.block_specializations[function.opset], weights)
    inputs, states = [], []
    for value in function.inputs:
        if value.type.WhichOneof("type") == "stateType":  # a tensor the program reads and writes across calls
            wrapped = value.type.stateType.wrappedType
            states.append((value.name, wrapped.tensorType.dataType, _shape(wrapped)))
        else:
            inputs.append((value.name, value.type.tensorType.dataType, _shape(value.type)))
    return Program(inputs, main.outputs, main, function.opset, states)
