"""TFLite graph passes: exact rewrites of the traced program's module, before litert-torch converts it,
for the patterns that keep a full-integer model off an NPU. Each pass is a small class with a typed
config and one entry point, `run(module) -> count of rewrites`; `run_passes` records node counts.

- affine_as_depthwise: a BatchNorm that cannot fold into a conv (it follows a ReLU, as in CREPE)
  reaches LiteRT as DEQUANTIZE -> SUB -> MUL -> MUL -> ADD -> QUANTIZE: a float island in an int8
  model. As a depthwise 1x1 conv it is one per-channel-quantized op that NPUs run.
- single_channel_conv: a conv over one input channel (an audio front end over raw samples) becomes a
  DEPTHWISE_CONV_2D with a depth multiplier, which Ethos-U refuses for strides above 3, and its long
  kernel runs along the height, which vela caps at 64. Rewritten over the stride's phases
  (space-to-depth: channel p holds samples p, p+s, p+2s, ...) it is a regular stride-1 conv with s
  input channels and K/s taps, laid along the width: the same sums, no extra multiplies."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from targets.catalog import PASSES as PASS_CATALOG
from targets.catalog import AffineAsDepthwiseConfig, SingleChannelConvConfig


def _aten(name: str):
    import torch

    return getattr(torch.ops.aten, name).default


def _attribute(module: Any, node: Any):
    """The tensor a get_attr node reads, or None when the argument is not a stored constant."""
    if getattr(node, "op", None) != "get_attr":
        return None
    value = module
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def _constant(module: Any, anchor: Any, name: str, value: Any) -> Any:
    """A new buffer on the module, read by a get_attr node inserted before `anchor`."""
    attribute = f"_edgeport_{anchor.name}_{name}"
    module.register_buffer(attribute, value.detach().contiguous())
    with module.graph.inserting_before(anchor):
        return module.graph.get_attr(attribute)


def _call(module: Any, anchor: Any, op: str, *args: Any) -> Any:
    """aten.<op>(*args) inserted before `anchor`, attributed to the anchor's module (for error
    messages and per-layer names)."""
    with module.graph.inserting_before(anchor):
        node = module.graph.call_function(_aten(op), args)
    node.meta.update({k: v for k, v in anchor.meta.items() if k in ("nn_module_stack", "stack_trace")})
    return node


class TflitePass(abc.ABC):
    """A pass: an id from the catalog, the typed config the catalog declares for it (a target sets it in
    [pass_options.tflite.<id>]), the aten op it looks at, and rewrite(module, node) -> the node that
    replaces it, or None to leave it. run(module) rewrites the GraphModule in place and counts."""

    id: ClassVar[str]
    op: ClassVar[str]  # aten op name, e.g. "batch_norm"

    def __init__(self, config=None):
        self.config = config if config is not None else PASS_CATALOG["tflite"][self.id].config()

    @abc.abstractmethod
    def rewrite(self, module: Any, node: Any) -> Any | None:
        """Insert the replacement before `node` and return it (None: not this pattern)."""

    def run(self, module: Any) -> int:
        rewritten = 0
        for node in list(module.graph.nodes):
            if node.op != "call_function" or node.target != _aten(self.op):
                continue
            replacement = self.rewrite(module, node)
            if replacement is not None:
                node.replace_all_uses_with(replacement)
                module.graph.erase_node(node)
                rewritten += 1
        return rewritten


_FOLDABLE_PRODUCERS = {"conv2d", "conv1d", "linear", "addmm", "convolution"}


class AffineAsDepthwise(TflitePass):
    """A 4-D inference BatchNorm not fed by a conv or linear (so the converter cannot fold it) becomes
    conv2d(x, scale[C,1,1,1], shift, groups=C)."""

    id: ClassVar[str] = "affine_as_depthwise"
    op: ClassVar[str] = "batch_norm"
    config: AffineAsDepthwiseConfig

    def rewrite(self, module: Any, node: Any) -> Any | None:
        import torch

        x, weight, bias, mean, var, training, _, eps = node.args[:8]
        producer = getattr(getattr(x, "target", None), "__name__", "").split(".")[0]
        if training or "val" not in x.meta or x.meta["val"].dim() != 4 or producer in _FOLDABLE_PRODUCERS:
            return None
        stats = [_attribute(module, n) for n in (mean, var)]
        if any(s is None for s in stats) or stats[0].numel() < self.config.min_channels:
            return None
        channels = stats[0].numel()
        gamma = _attribute(module, weight) if weight is not None else torch.ones(channels)
        beta = _attribute(module, bias) if bias is not None else torch.zeros(channels)
        if gamma is None or beta is None:
            return None
        scale = gamma.double() / torch.sqrt(stats[1].double() + eps)
        shift = beta.double() - stats[0].double() * scale
        dtype = stats[0].dtype
        kernel = _constant(module, node, "scale", scale.to(dtype).reshape(channels, 1, 1, 1))
        offset = _constant(module, node, "shift", shift.to(dtype))
        return _call(module, node, "conv2d", x, kernel, offset, [1, 1], [0, 0], [1, 1], channels)


_CONV_DEFAULTS = ([1, 1], [0, 0], [1, 1], 1)  # aten.conv2d's stride, padding, dilation, groups


class SingleChannelConv(TflitePass):
    """conv2d over one input channel with a (K, 1) or (1, K) kernel and stride s along K, K a multiple
    of s and the input length a multiple of s: the same conv over the s phases of the input, with K/s
    taps, stride 1, laid along the width."""

    id: ClassVar[str] = "single_channel_conv"
    op: ClassVar[str] = "conv2d"
    config: SingleChannelConvConfig

    def rewrite(self, module: Any, node: Any) -> Any | None:
        x, weight_node, *rest = node.args
        bias, given = (rest[0], rest[1:]) if rest else (None, [])
        stride, padding, dilation, groups = [*given, *_CONV_DEFAULTS[len(given):]]
        stride, padding, dilation = (list(v) * (2 // len(v)) for v in (stride, padding, dilation))
        weight, value = _attribute(module, weight_node), x.meta.get("val")
        if value is None or weight is None or weight.shape[1] != 1 or groups != 1 or list(dilation) != [1, 1] \
                or any(padding) or value.dim() != 4 or value.shape[1] != 1:
            return None
        shape = tuple(value.shape)
        along_height = weight.shape[3] == 1 and shape[3] == 1
        if not along_height and not (weight.shape[2] == 1 and shape[2] == 1):
            return None
        axis = 2 if along_height else 3
        taps, phases, length = weight.shape[axis], int(stride[axis - 2]), shape[axis]
        if stride[3 - axis] != 1 or taps < self.config.min_taps or taps % phases or length % phases:
            return None
        # input (N, 1, L) -> (N, s, 1, L/s): channel p, position m holds sample s*m + p
        flat = _call(module, node, "reshape", x, [-1, length // phases, phases])
        phased = _call(module, node, "unsqueeze", _call(module, node, "permute", flat, [0, 2, 1]), 2)
        kernel = weight.reshape(weight.shape[0], taps // phases, phases).permute(0, 2, 1).unsqueeze(2)
        conv = _call(module, node, "conv2d", phased, _constant(module, node, "phase_kernel", kernel), bias,
                     [1, 1], [0, 0], [1, 1], 1)
        return _call(module, node, "permute", conv, [0, 1, 3, 2]) if along_height else conv


PASSES = {cls.id: cls for cls in (AffineAsDepthwise, SingleChannelConv)}


@dataclass(frozen=True)
class PassRecord:
    id: str
    rewrites: int
    seconds: float

    def to_json(self) -> dict:
        return {"pass": self.id, "rewrites": self.rewrites}


def run_passes(module: Any, pass_ids: tuple[str, ...], configs: dict[str, Any] | None = None) -> list[PassRecord]:
    """Run the passes in order on the module (in place), each with the target's config (else defaults)."""
    unknown = [p for p in pass_ids if p not in PASSES]
    if unknown:  # targets validate ids against the catalog; this guards the registry itself
        raise KeyError(f"no implementation for TFLite pass(es) {unknown}")
    configs = configs or {}
    records = []
    for tflite_pass in [PASSES[p](configs.get(p)) for p in pass_ids]:
        start = time.perf_counter()
        count = tflite_pass.run(module)
        records.append(PassRecord(tflite_pass.id, count, time.perf_counter() - start))
    if records:
        module.graph.eliminate_dead_code()
        module.graph.lint()
        module.recompile()
    return records
