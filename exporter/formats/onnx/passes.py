"""ONNX graph passes. Each pass is a small class with a typed config and one entry point,
`run(model) -> model`; `run_passes` checks pass ids before anything runs and the graph
(onnx.checker) after every pass, and records node counts before and after."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from targets.catalog import PASSES as PASS_CATALOG
from targets.catalog import EliminateDeadNodesConfig, FoldBatchNormConfig, FoldConstantsConfig, SimplifyConfig

# Ops whose value is not a function of their inputs: never folded.
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes of this graph, including those read from inside If/Loop/Scan bodies."""
    names: set[str] = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _subgraph_inputs(sub)
    return names


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


class OnnxPass(abc.ABC):
    """A graph pass: an id from the catalog, the typed config the catalog declares for it (a target sets
    it in [pass_options.onnx.<id>]), and run(model) -> model. Abstract: a pass without run cannot be made."""

    id: ClassVar[str]

    def __init__(self, config=None):
        self.config = config if config is not None else PASS_CATALOG["onnx"][self.id].config()

    @abc.abstractmethod
    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The rewritten model (in place or new); run_passes checks it with onnx.checker."""


class FoldConstants(OnnxPass):
    """Evaluate nodes whose inputs are all constants; store results as initializers."""

    id: ClassVar[str] = "fold_constants"
    config: FoldConstantsConfig

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        from onnx.reference import ReferenceEvaluator

        graph = model.graph
        constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        graph_outputs = {o.name for o in graph.output}
        opsets = {o.domain: o.version for o in model.opset_import}
        kept, new_inits = [], []
        for node in graph.node:
            foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NONDETERMINISTIC
                        and not _has_subgraph(node) and all(i in constants for i in node.input if i)
                        and not any(o in graph_outputs for o in node.output))
            if not foldable:
                kept.append(node)
                continue
            inputs = {i: constants[i] for i in node.input if i}
            try:
                values = ReferenceEvaluator(node, opsets=opsets).run(None, inputs)
            except Exception:  # the reference evaluator lacks this op: leave it to the runtime
                kept.append(node)
                continue
            if sum(np.asarray(v).size for v in values) > self.config.max_output_elements:
                kept.append(node)
                continue
            for name, value in zip(node.output, values, strict=False):
                constants[name] = np.asarray(value)
                new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(new_inits)
        return model


class FoldBatchNorm(OnnxPass):
    """Fold inference BatchNormalization into the Conv (or Gemm) that feeds it."""

    id: ClassVar[str] = "fold_batchnorm"
    config: FoldBatchNormConfig

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        graph = model.graph
        inits = {i.name: i for i in graph.initializer}
        producers = {o: n for n in graph.node for o in n.output}
        readers = _consumers(graph)
        graph_outputs = {o.name for o in graph.output}
        removed: set[int] = set()
        for bn in graph.node:
            if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
                continue
            producer = producers.get(bn.input[0])
            if producer is None or len(readers.get(bn.input[0], [])) != 1 or bn.input[0] in graph_outputs:
                continue
            if not all(name in inits for name in bn.input[1:5]):
                continue
            scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            factor = scale / np.sqrt(var + eps)
            shift = bias - mean * factor
            if producer.op_type == "Conv":
                folded = self._fold_conv(producer, factor, shift, inits, graph)
            elif producer.op_type == "Gemm" and self.config.fold_into_gemm:
                folded = self._fold_gemm(producer, factor, shift, inits, graph)
            else:
                folded = False
            if not folded:
                continue
            producer.output[0] = bn.output[0]
            removed.add(id(bn))
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        return model

    @staticmethod
    def _new_init(graph: onnx.GraphProto, name: str, value: np.ndarray, like: onnx.TensorProto) -> str:
        dtype = numpy_helper.to_array(like).dtype
        graph.initializer.append(numpy_helper.from_array(value.astype(dtype), name))
        return name

    def _fold_conv(self, conv, factor, shift, inits, graph) -> bool:
        if conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits):
            return False
        weight_init = inits[conv.input[1]]
        weight = numpy_helper.to_array(weight_init).astype(np.float64)
        if weight.shape[0] != factor.shape[0]:
            return False
        has_bias = len(conv.input) > 2 and conv.input[2]
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else 0.0
        folded_w = weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
        folded_b = np.asarray(bias) * factor + shift
        base = conv.name or conv.output[0]
        w_name = self._new_init(graph, f"{base}.bn_folded.weight", folded_w, weight_init)
        b_name = self._new_init(graph, f"{base}.bn_folded.bias", folded_b, weight_init)
        conv.input[1] = w_name
        if has_bias:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
        return True

    def _fold_gemm(self, gemm, factor, shift, inits, graph) -> bool:
        attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or gemm.input[1] not in inits:
            return False
        has_bias = len(gemm.input) > 2 and gemm.input[2]
        if has_bias and gemm.input[2] not in inits:
            return False
        weight_init = inits[gemm.input[1]]
        weight = numpy_helper.to_array(weight_init).astype(np.float64)
        trans_b = attrs.get("transB", 0)
        folded_w = weight * (factor[:, None] if trans_b else factor[None, :])
        bias = numpy_helper.to_array(inits[gemm.input[2]]).astype(np.float64) if has_bias else 0.0
        folded_b = np.broadcast_to(np.asarray(bias) * factor + shift, factor.shape)
        base = gemm.name or gemm.output[0]
        gemm.input[1] = self._new_init(graph, f"{base}.bn_folded.weight", folded_w, weight_init)
        b_name = self._new_init(graph, f"{base}.bn_folded.bias", folded_b, weight_init)
        if has_bias:
            gemm.input[2] = b_name
        else:
            gemm.input.append(b_name)
        return True


class EliminateDeadNodes(OnnxPass):
    """Bypass Identity nodes, drop nodes no output depends on, drop unused initializers."""

    id: ClassVar[str] = "eliminate_dead_nodes"
    config: EliminateDeadNodesConfig

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        graph = model.graph
        graph_outputs = {o.name for o in graph.output}
        if self.config.remove_identity:
            self._bypass_identities(graph, graph_outputs)
        needed = set(graph_outputs)
        kept: list[onnx.NodeProto] = []
        for node in reversed(graph.node):
            if any(o in needed for o in node.output):
                kept.append(node)
                needed |= _subgraph_inputs(_graph_of([node]))
        kept.reverse()
        del graph.node[:]
        graph.node.extend(kept)
        used = _subgraph_inputs(graph) | graph_outputs
        inits = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        return model

    @staticmethod
    def _bypass_identities(graph: onnx.GraphProto, graph_outputs: set[str]) -> None:
        renames: dict[str, str] = {}
        kept = []
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]
            if node.op_type == "Identity" and node.output[0] not in graph_outputs:
                renames[node.output[0]] = node.input[0]
            else:
                kept.append(node)
        del graph.node[:]
        graph.node.extend(kept)


def _graph_of(nodes: list[onnx.NodeProto]) -> onnx.GraphProto:
    return helper.make_graph(nodes, "g", [], [])


class Simplify(OnnxPass):
    """onnxslim: constant/shape folding with shape inference, pattern fusion, redundant-op removal."""

    id: ClassVar[str] = "simplify"
    config: SimplifyConfig

    def run(self, model: onnx.ModelProto) -> onnx.ModelProto:
        import logging

        import onnxslim

        logging.getLogger("onnxslim").setLevel(logging.ERROR)
        kwargs = {"skip_fusion_patterns": list(self.config.skip_fusions)} if self.config.skip_fusions else {}
        return onnxslim.slim(model, **kwargs)


PASSES = {cls.id: cls for cls in (FoldConstants, FoldBatchNorm, EliminateDeadNodes, Simplify)}


@dataclass(frozen=True)
class PassRecord:
    id: str
    nodes_before: int
    nodes_after: int
    seconds: float

    def to_json(self) -> dict:
        return {"pass": self.id, "nodes_before": self.nodes_before, "nodes_after": self.nodes_after}


class PassBrokeGraphError(RuntimeError):
    """An internal bug: a pass produced a graph onnx.checker rejects."""


def run_passes(model: onnx.ModelProto, pass_ids: tuple[str, ...],
               configs: dict[str, Any] | None = None) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run the passes in order, each with the target's config for it (else its defaults)."""
    unknown = [p for p in pass_ids if p not in PASSES]
    if unknown:  # targets validate ids against the catalog; this guards the registry itself
        raise KeyError(f"no implementation for ONNX pass(es) {unknown}")
    configs = configs or {}
    pipeline = [PASSES[p](configs.get(p)) for p in pass_ids]
    records = []
    for onnx_pass in pipeline:
        before = len(model.graph.node)
        start = time.perf_counter()
        model = onnx_pass.run(model)
        elapsed = time.perf_counter() - start
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise PassBrokeGraphError(f"ONNX pass {onnx_pass.id} produced an invalid graph: {exc}") from exc
        records.append(PassRecord(onnx_pass.id, before, len(model.graph.node), elapsed))
    return model, records
