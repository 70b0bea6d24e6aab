"""Block-wise weight-only quantization of an exported decode step (onnxruntime's MatMulNBits and
GatherBlockQuantized), with an explicit policy per group of weights:

- decoder linears: the variant's bits (8 or 4), by round-to-nearest or GPTQ, whose codes come from the PyTorch
  plan (exporter/quant/plan.py) and are written as they are, or by onnxruntime's k-quant or HQQ;
- layers auto precision keeps: 8 bits inside a 4-bit variant, float inside an 8-bit one;
- output head: `embedding_bits` (8 for 8-bit variants), uint8 zero points; the embedding table of a tied model
  reads the head's blocks (one tensor, 4 or 8 bits: GatherBlockQuantized takes both in onnxruntime 1.32), and
  an untied table gets its own blocks at embedding_bits.

8-bit blocks are asymmetric: on SmolLM2-135M their logits stay closer to float32 than symmetric ones (max
|delta| 1.66 against 2.80 over a 37-token prompt, top-1 agreement 95-97% either way). Symmetric 8-bit blocks and
8-bit weight prepacking compute correctly in onnxruntime: judge them by logits, not by greedy tokens on a prompt
whose first token is a near tie (25.33 against 25.24).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.formats.onnx.graph import module_path, save_onnx, share_tied_table, tied_table_note
from exporter.lm.backend import EMBEDDING, HEAD
from exporter.quant.plan import METHODS, Planner, Scheme, planned_by, source_grid_note

# MatMulNBits' compute of the activations, as the precision row declares it: int8 quantizes them per block at
# run time (level 4, the fast CPU kernels); float (level 0: unset) computes in float32
ACCURACY_LEVELS = {"int8": 4, "float": 0}


@dataclass
class WeightPlan:
    bits: int  # the decoder linears' bits
    block_size: int
    method: str  # rtn | k_quant | hqq (4-bit body only)
    embedding_bits: int = 8  # 32: float
    kept: dict[str, int | None] = field(default_factory=dict)  # module path -> 8, or None for float
    symmetric_4bit: bool = False  # zero points cost 1/8 bit per weight; they fit asymmetric weights (GGUF's Q4_1)
    float_zero_points: bool = False  # asymmetric 4-bit blocks' offsets exact (Q4_1's minimum), not whole codes
    activations: str = "int8"  # ACCURACY_LEVELS


def linear_nodes(model: Any) -> dict[str, Any]:
    """module path -> the MatMul node that applies that nn.Linear's constant weight."""
    constants = {init.name for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in constants and (path := module_path(node)):
            found[path] = node
    return found


def _algorithm(method: str, bits: int, block_size: int, symmetric: bool, accuracy_level: int) -> Any:
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    if method == "hqq":
        return nbits.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits)
    if method == "k_quant":
        return nbits.KQuantWeightOnlyQuantConfig()
    return nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits,
                                              accuracy_level=accuracy_level)


def _quantize(model: Any, names: list[str], bits: int, block_size: int, method: str, op_types=("MatMul",),
              symmetric: bool = False, accuracy_level: int = 0) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if not names:
        return model
    symmetric = symmetric and bits == 4  # 8-bit blocks are always asymmetric (see above)
    algorithm = _algorithm(method, bits, block_size, symmetric, accuracy_level)
    algorithm.op_types_to_quantize = set(op_types)
    # nodes_to_include adds to the op types rather than narrowing them: exclude every other candidate
    others = [n.name for n in model.graph.node if n.op_type in op_types and n.name not in set(names)]
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level, nodes_to_exclude=others, algo_config=algorithm)
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level, logger.level = logger.level, logging.WARNING  # it logs every node it looks at
    try:
        quantizer.process()
    finally:
        logger.setLevel(level)
    return quantizer.model.model


def quantize_weights(fp32: Path, out: Path, plan: WeightPlan, planner: Planner) -> dict:
    """Write out (+ .data) and return the quantization record: which weights got how many bits. The codes come
    from the PyTorch plan (round-to-nearest or GPTQ, exporter/quant/plan.py), written as they are; hqq and
    k_quant are onnxruntime's own quantizers, run on the graph."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from exporter.formats.onnx.nbits import gather_block_quantized, matmul_nbits

    # the float weights stay in fp32's data file: the plan's codes replace most of them, and a protobuf does not
    # give back the memory of an initializer it deletes (a 0.5B-shaped model's w4 step held 2.5 GB for nothing)
    model = onnx.load(str(fp32), load_external_data=False)
    weights_in = str(fp32.parent)
    linears = linear_nodes(model)
    body = [p for p in linears if p != HEAD and p not in plan.kept]
    at_8 = [p for p in linears if p != HEAD and plan.kept.get(p, 0) == 8]
    head_bits = None  # the output head: as auto precision kept it (8, or float: 32), else at embedding_bits
    if HEAD in linears:
        head_bits = (plan.kept[HEAD] or 32) if HEAD in plan.kept else plan.embedding_bits
    embedding = next((n for n in model.graph.node if n.op_type == "Gather" and module_path(n) == EMBEDDING), None)
    tied = head_bits is not None and embedding is not None and _tied(model, linears[HEAD], embedding, weights_in)
    in_pytorch = plan.method in METHODS
    body_scheme = Scheme(plan.bits, plan.block_size, plan.symmetric_4bit and plan.bits == 4,
                         plan.float_zero_points and plan.bits == 4 and not plan.symmetric_4bit)
    # kept layers and the head: uint8 zero points, which the embedding lookup can read; by the variant's
    # method when it is a PyTorch one
    side_method = plan.method if in_pytorch else "rtn"
    level = ACCURACY_LEVELS[plan.activations]
    if not in_pytorch:  # onnxruntime's quantizers read the float weights from the graph
        load_external_data_for_model(model, weights_in)
        model = _quantize(model, [linears[p].name for p in body], plan.bits, plan.block_size, plan.method,
                          symmetric=plan.symmetric_4bit, accuracy_level=level)
    passes = [(body if in_pytorch else [], body_scheme, plan.method),
              (at_8, Scheme(8, plan.block_size, False), side_method)]
    if head_bits in (4, 8):
        passes.append(([HEAD], Scheme(head_bits, plan.block_size, False), side_method))
    head_node = None
    written = []
    for paths, scheme, method in passes:
        for path in paths:
            weight = planner.weight(path, scheme, method)
            written.append(weight)
            node = matmul_nbits(model, linears[path], weight, level)
            head_node = node if path == HEAD else head_node
    shared = tied and head_node is not None  # one table: the lookup reads the head's blocks
    if shared:
        _gather_from_head(model, embedding, head_node)
    elif embedding is not None and plan.embedding_bits in (4, 8):
        table = planner.weight(EMBEDDING, Scheme(plan.embedding_bits, plan.block_size, False), "rtn")
        written.append(table)
        gather_block_quantized(model, embedding, table)
    embedding_bits = head_bits if shared else plan.embedding_bits if plan.embedding_bits in (4, 8) else 32
    load_external_data_for_model(model, weights_in)  # what stays float: norms, kept layers, a float table
    save_onnx(model, out)
    planned = planned_by(written)  # method -> weights (the source's own grid: "source")
    return {"scheme": f"w{plan.bits}", "block_size": plan.block_size, "method": plan.method,
            "computed_in": "PyTorch (exporter/quant/plan.py), codes written as they are" if in_pytorch else
            "onnxruntime's MatMulNBitsQuantizer on the graph",
            "decoder_linears_scheme": body_scheme.describe(),
            "activations": f"{plan.activations} (MatMulNBits accuracy_level {level})",
            "decoder_linears": len(body), "head_bits": head_bits, "planned_by": planned,
            "source_grid": source_grid_note(planner, body, body_scheme, planned, 'zero_points = "float"')
            if in_pytorch else None,
            "embedding_bits": embedding_bits if embedding is not None else None, "embedding_shares_head": shared,
            "kept": {p: (b if b else "float") for p, b in sorted(plan.kept.items())}}


def _tied(model: Any, head: Any, embedding: Any, weights_in: str) -> bool:
    from onnx import numpy_helper

    arrays = {init.name: init for init in model.graph.initializer if init.name in (head.input[1], embedding.input[0])}
    if len(arrays) != 2:
        return False
    weight, table = (numpy_helper.to_array(arrays[n], weights_in) for n in (head.input[1], embedding.input[0]))
    return weight.shape == table.shape[::-1] and bool((table == weight.T).all())


def _gather_from_head(model: Any, embedding: Any, head: Any) -> None:
    """A tied table stays one tensor: the embedding lookup reads the output head's blocks (GatherBlockQuantized
    over MatMulNBits' weight, as onnxruntime-genai's builder lays it out; 4 or 8 bits)."""
    import numpy as np
    from onnx import helper, numpy_helper

    attributes = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    rows = numpy_helper.from_array(np.array([attributes["N"], -1], dtype=np.int64), f"{head.name}_row_shape")
    model.graph.initializer.append(rows)
    reshapes = [helper.make_node("Reshape", [name, rows.name], [f"{name}_rows"], name=f"{name}_rows")
                for name in head.input[1:4] if name]  # weight blocks, scales (zero points): one row per token
    gather = helper.make_node("GatherBlockQuantized", [reshapes[0].output[0], embedding.input[1],
                                                       *(r.output[0] for r in reshapes[1:])],
                              list(embedding.output), name=embedding.name + "_blocks", domain="com.microsoft",
                              bits=attributes["bits"], block_size=attributes["block_size"], gather_axis=0,
                              quantize_axis=1)
    index = list(model.graph.node).index(embedding)
    model.graph.node.remove(embedding)
    for offset, node in enumerate([*reshapes, gather]):
        model.graph.node.insert(index + offset, node)
    table = embedding.input[0]
    if not any(table in n.input for n in model.graph.node):
        kept = [init for init in model.graph.initializer if init.name != table]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)


def to_fp16(fp32: Path, out: Path) -> dict:
    """float16 weights and compute, float32 logits and cache I/O."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32))
    saved = share_tied_table(model)
    save_onnx(convert_float_to_float16(model, keep_io_types=True), out)
    return {"scheme": "fp16", "keep_io_types": True, **tied_table_note(saved // 2)}
