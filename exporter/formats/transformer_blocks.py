"""Static int8 for transformer blocks: which operators stay float, read from the graph's structure.

One per-tensor int8 scale serves a transformer's residual stream badly: the sum a LayerNorm reads
carries a few channels hundreds of times larger than the rest, and so does the output of the
feed-forward block's activation (GELU, SiLU), the down projection's input; attention scores span
hundreds where most differences that matter are below one. So the norms, the residual adds feeding
them, the attention scores (query x key to softmax) and the down projections stay float; the
query/key/value, output and up projections run int8, their inputs smoothed where a norm writes
them (SmoothQuant, exporter/quant/smooth.divisors). Android CPUs have no int16 activation kernels
in onnxruntime or XNNPACK, so float is what keeps these fast there.

Measured with 48 real sentences (cosine of the int8 embedding against PyTorch's):

| | every operator int8 | this recipe, no smoothing | this recipe |
|---|---|---|---|
| all-MiniLM-L6-v2, ONNX QDQ | 0.855 | 0.9937 | 0.9968 |
| all-MiniLM-L6-v2, LiteRT | 0.653 | | 0.9978 |
| all-mpnet-base-v2, ONNX QDQ | 0.221 | 0.9839 | 0.9923 |
| all-mpnet-base-v2, LiteRT | 0.091 | | 0.9921 |

In ONNX the norms, residual adds and down projections alone give MiniLM 0.994; its residual adds
or down projections alone, 0.916 and 0.858. LiteRT also needs the attention scores (0.84 without).

Both formats describe their graph as GraphOps; the recipe is found once, here."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# kinds a format maps its operators to
NORM = "norm"  # a whole normalization operator (ONNX LayerNormalization)
NORM_CORE = "norm_core"  # the reciprocal square root of a normalization the converter decomposed (LiteRT)
ADD = "add"
FFN_ACTIVATION = "ffn_activation"  # GELU, or the Erf/Tanh/Sigmoid inside a decomposed GELU or SiLU
WEIGHTED = "weighted"  # a matmul or conv with a constant weight; its activation input comes first
SOFTMAX = "softmax"
ACTIVATION_MATMUL = "activation_matmul"  # a matmul of two activations (attention's query x key)
OTHER = "other"

REASON = ("outlier channels in the residual stream and in the feed-forward activation, and attention scores "
          "spanning hundreds, are more than one int8 scale can hold; the other matmuls run int8")
# how many operators back from a weighted op's input the feed-forward activation may sit (a decomposed
# GELU is Mul(Mul(x, 0.5), Add(1, Erf(x / sqrt 2))), SwiGLU is Mul(Mul(gate, Sigmoid(gate)), up))
_ACTIVATION_DEPTH = 4
# how many operators may lie between attention's query x key matmul and its softmax (scale, relative
# position bias, mask, reshapes)
_SCORE_DEPTH = 8


@dataclass(frozen=True)
class GraphOp:
    key: str  # what the format's quantizer selects operators by (ONNX node name, LiteRT scope)
    kind: str
    inputs: tuple[str, ...]  # tensors computed at run time (constants left out)
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class FloatRegions:
    keys: tuple[str, ...]  # the operators kept float
    norms: int
    residual_adds: int
    attention_scores: int
    down_projections: int
    norm_outputs: tuple[str, ...]  # tensors a norm writes and a weighted op reads: what smoothing divides

    def record(self, smoothed: int, smoothing: str) -> dict:
        """The manifest's quantization.transformer_blocks: what stays float and why, and how many norm
        outputs were smoothed (`smoothing` says how)."""
        return {"float_operators": len(self.keys), "norms": self.norms, "residual_adds": self.residual_adds,
                "attention_scores": self.attention_scores, "down_projections": self.down_projections,
                "reason": REASON, "norms_smoothed": smoothed, "smoothing": smoothing}


def float_regions(ops: list[GraphOp]) -> FloatRegions | None:
    """The operators to keep float in a graph with normalizations; None when it has none (not a
    transformer: a CNN's static int8 is left as it was)."""
    producer = {t: op for op in ops for t in op.outputs}
    consumers: dict[str, list[GraphOp]] = {}
    for op in ops:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)
    kept: dict[str, None] = {}  # ordered set of keys
    norms = [op for op in ops if op.kind in (NORM, NORM_CORE)]
    if not norms:
        return None
    residual: set[str] = set()
    norm_outputs: dict[str, None] = {}
    for norm in norms:
        region, sources = _norm_region(norm, producer, consumers)
        kept.update(dict.fromkeys(op.key for op in region))
        norm_outputs.update(dict.fromkeys(
            t for op in region for t in op.outputs
            if any(c.kind == WEIGHTED and c.inputs[0] == t for c in consumers.get(t, ()))))
        for op in sources:
            residual.add(op.key)
            kept[op.key] = None
    scores = 0
    for op in ops:
        chain = _path_to_matmul(op, producer) if op.kind == SOFTMAX else []
        if chain:
            scores += 1
            kept.update(dict.fromkeys([op.key, *(c.key for c in chain)]))
    down = 0
    for op in ops:
        chain = _activation_chain(op, producer)
        if chain:
            down += 1
            kept.update(dict.fromkeys([op.key, *(c.key for c in chain)]))
    return FloatRegions(tuple(kept), len(norms), len(residual), scores, down, tuple(norm_outputs))


SMOOTHING_ALPHA = 0.5  # SmoothQuant's migration strength for the matmuls reading a norm, in every format
SMOOTHING_REASON = ("the input of each matmul reading a norm divided per channel by SmoothQuant's scale "
                    "(alpha {alpha}), its weights multiplied by it")


def _is_residual_add(op: GraphOp) -> bool:
    return op.kind == ADD and len(op.inputs) == 2


def _norm_region(norm: GraphOp, producer: dict[str, GraphOp], consumers: dict[str, list[GraphOp]]):
    """A normalization's operators, and the residual adds producing its input. Back from the norm's
    core to the tensor it normalizes (stopping at a residual add or a weighted op), then forward over
    every operator computed only from what is already inside (the scale and shift after the core)."""
    region = {norm.key: norm}
    sources: dict[str, GraphOp] = {}
    known: set[str] = set(norm.outputs)
    stack = list(norm.inputs) if norm.kind == NORM_CORE else [norm.inputs[0]]
    while stack:
        tensor = stack.pop()
        known.add(tensor)
        op = producer.get(tensor)
        if op is None or op.key in region:
            continue
        if _is_residual_add(op):
            sources[op.key] = op
        elif norm.kind == NORM_CORE and op.kind not in (WEIGHTED, NORM, NORM_CORE):
            region[op.key] = op
            known.update(op.outputs)
            stack.extend(op.inputs)
    grown = True
    while grown:
        grown = False
        for tensor in list(known):
            for op in consumers.get(tensor, ()):
                if op.key not in region and op.kind not in (WEIGHTED, NORM, NORM_CORE) \
                        and all(t in known for t in op.inputs):
                    region[op.key] = op
                    known.update(op.outputs)
                    grown = True
    return list(region.values()), list(sources.values())


def _path_to_matmul(softmax: GraphOp, producer: dict[str, GraphOp]) -> list[GraphOp]:
    """The attention scores: the operators from the query x key matmul (included) to a softmax (its
    scale, a position bias, the mask add, reshapes), the shortest path back within _SCORE_DEPTH
    operators, none weighted; [] when there is none."""
    parent: dict[str, GraphOp | None] = {softmax.key: None}
    queue = deque([(softmax, 0)])
    while queue:
        op, depth = queue.popleft()
        if op.kind == ACTIVATION_MATMUL:
            path = []
            while op is not softmax:
                path.append(op)
                op = parent[op.key]
            return path
        if depth == _SCORE_DEPTH:
            continue
        for source in (producer[t] for t in op.inputs if t in producer):
            if source.key not in parent and source.kind not in (WEIGHTED, NORM, NORM_CORE):
                parent[source.key] = op
                queue.append((source, depth + 1))
    return []


def _activation_chain(op: GraphOp, producer: dict[str, GraphOp]) -> list[GraphOp]:
    """For a weighted op fed by a feed-forward activation (within _ACTIVATION_DEPTH operators, none
    of them weighted), the operators between; else []."""
    if op.kind != WEIGHTED or not op.inputs:
        return []
    seen: dict[str, GraphOp] = {}
    queue = deque([(op.inputs[0], 1)])
    found = False
    while queue:
        tensor, depth = queue.popleft()
        source = producer.get(tensor)
        if source is None or source.kind in (WEIGHTED, NORM, NORM_CORE) or source.key in seen:
            continue
        seen[source.key] = source
        found |= source.kind == FFN_ACTIVATION
        if depth < _ACTIVATION_DEPTH:
            queue.extend((t, depth + 1) for t in source.inputs)
    return list(seen.values()) if found else []
