"""The language-model decode step (exporter/lm/decode_step.py) as an ONNX graph: opset 23, weights in an external
.data file, the tied head stored transposed; and the module path each exported node came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.artifact_dir import cache_io_names
from exporter.lm.decode_step import STATIC_CACHE_IO, grouped_query_attention, not_exported, trace_decode_step

# Opset 23 has Attention, RMSNormalization and RotaryEmbedding: the exporter writes one node where opset 20 has
# a dozen, and onnxruntime runs them as fused kernels (w8 decode of SmolLM2-135M: 49-51 -> 57-59 tokens/s).
OPSET = 23


def export_decode_step(model: Any, cache_length: int, prefill_length: int, out: Path) -> dict:
    """Write out (+ out.data) and return the cache description the manifest records."""
    import torch

    program, cache = trace_decode_step(model, cache_length, prefill_length)
    try:
        with torch.no_grad(), grouped_query_attention():
            inputs, outputs = cache_io_names(cache["layers"], STATIC_CACHE_IO)
            onnx_program = torch.onnx.export(program, (), input_names=inputs, output_names=outputs, dynamo=True,
                                             optimize=True, verbose=False, opset_version=OPSET)
    except Exception as exc:  # the ONNX exporter on a program it cannot take
        raise not_exported(model, exc) from exc
    onnx_program.save(str(out), external_data=True)
    _tidy(out)
    return cache | {"io": POSITION_IDS_IO}


# onnxruntime-genai feeds a decoder's positions as position_ids [batch, tokens] (its past and present names are
# configurable, this input's shape is not): the traced step's cache_position [tokens] is that input squeezed
POSITION_IDS_IO = STATIC_CACHE_IO | {"position": "position_ids"}


def _positions_as_ids(model: Any) -> None:
    from onnx import TensorProto, helper

    traced = next(i for i in model.graph.input if i.name == STATIC_CACHE_IO["position"])
    index = list(model.graph.input).index(traced)
    model.graph.input.remove(traced)
    length = traced.type.tensor_type.shape.dim[0].dim_param or "sequence"
    model.graph.input.insert(index, helper.make_tensor_value_info(POSITION_IDS_IO["position"], TensorProto.INT64,
                                                                  [1, length]))
    model.graph.initializer.append(helper.make_tensor("position_ids_batch_axis", TensorProto.INT64, [1], [0]))
    model.graph.node.insert(0, helper.make_node("Squeeze", [POSITION_IDS_IO["position"], "position_ids_batch_axis"],
                                                [traced.name]))


def _tidy(path: Path) -> None:
    """Three rewrites of the exported graph. A tied output head reads the embedding table through a Transpose
    computed on every call (a whole vocab x hidden copy per token), and is then no constant a weight quantizer
    can see: it is stored transposed. The exporter's stack traces name files by their absolute path, so the
    same export from two checkouts differed in bytes: they are dropped (name scopes stay, module_path reads them).
    And the positions come in as onnxruntime-genai's position_ids."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    for node in list(model.graph.node):
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[0]])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        folded = numpy_helper.from_array(weight.transpose(perm) if perm else weight.T, node.output[0])
        model.graph.initializer.append(folded)
        model.graph.node.remove(node)
    _positions_as_ids(model)
    save_onnx(model, path)


STACK_TRACE = "pkg.torch.onnx.stack_trace"


def tied_table_note(saved_bytes: int) -> dict:
    """The manifest's line for share_tied_table's rewrite, when it made one."""
    return {"tied_table": f"stored once, read by the lookup and the head ({saved_bytes} bytes saved)"} \
        if saved_bytes else {}


def share_tied_table(model: Any) -> int:
    """A tied head's table stored once: _tidy stores the head's transposed copy beside the lookup's table (a second
    vocab x hidden tensor: SmolLM2-135M's fp32 653 MB for 540 MB of weights), so the lookup is pointed at the
    head's copy instead: Gather along its axis 1, then a Transpose of the few gathered rows. Returns the bytes
    saved; 0 when no lookup table is a head's transpose. Float variants only: the weight quantizers find the
    table and head as traced."""
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    heads = {tuple(initializers[n.input[1]].dims): n.input[1] for n in model.graph.node
             if n.op_type == "MatMul" and n.input[1] in initializers and len(initializers[n.input[1]].dims) == 2}
    saved = 0
    for node in list(model.graph.node):
        table_name = node.input[0] if node.op_type == "Gather" else None
        if table_name not in initializers or users[table_name] != 1 or \
                any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        table = initializers[table_name]
        head = heads.get(tuple(reversed(table.dims)))
        values = numpy_helper.to_array(table) if head else None
        if head is None or not (values == numpy_helper.to_array(initializers[head]).T).all():
            continue
        rows = node.output[0] + "_by_column"
        rank = next((len(v.type.tensor_type.shape.dim) for v in model.graph.input if v.name == node.input[1]), None)
        if rank is None:
            continue  # indices computed in the graph: their rank is not read here
        lookup = helper.make_node("Gather", [head, node.input[1]], [rows], axis=1, name=node.name + "_head_table")
        back = helper.make_node("Transpose", [rows], [node.output[0]], perm=[*range(1, rank + 1), 0],
                                name=node.name + "_rows")
        position = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(position, back)
        model.graph.node.insert(position, lookup)
        model.graph.initializer.remove(table)
        saved += values.nbytes
    return saved


def save_onnx(model: Any, path: Path) -> None:
    """An ONNX model with its weights in path + '.data' (language models are past protobuf's 2 GiB)."""
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


def module_path(node: Any) -> str:
    """The transformers module path of an exported ONNX node (model.layers.7.mlp.down_proj), from the
    name scopes torch.onnx records; '' when there are none."""
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            modules = [s for s in scopes[:-1] if s]
            return modules[-1].removeprefix("model.") if modules else ""
    return ""
