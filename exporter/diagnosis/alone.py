"""Each layer quantized alone, measured on the float PyTorch model: quantize once, then substitute
one layer at a time.

The artifact is built once. For each weighted layer it tells (QuantizedLayer) its float weight as
the artifact stores it, the same weight dequantized from the artifact, and the quantization of the
layer's input activation. The PyTorch module owning that weight is found by value: the artifact's
float weight is the module's weight in some layout (transposed, OHWI), scaled per output channel
where a BatchNorm was folded into it. Then one batched forward of the eager model per layer, with
that layer's weight replaced and its input fake-quantized, gives the layer's error at itself and at
the model's outputs. That costs one forward per layer instead of one quantization and one runtime
session per layer: a 90-layer MobileViT's android export took 714 s with its blame before and 170 s
after (bench/results.json `large_model_android`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.batching import sample_count

_FOLD_TOLERANCE = 1e-4  # relative residual of "artifact weight = per-channel scale x module weight"
# FLOPs for all layers' forwards together: about 10 s of eager PyTorch on this 2-core machine, so the
# diagnosis stays within the time a conversion takes; never fewer samples than MIN_SAMPLES
FLOP_BUDGET = 2e11
MIN_SAMPLES = 6


@dataclass(frozen=True)
class InputQuant:
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    per_sample: bool = False  # scale and zero point chosen per run from each sample's range (dynamic range)


# a dynamic-range kernel's input: asymmetric 8 bits over each sample's own range (0 included)
DYNAMIC_INPUT = InputQuant(0.0, 0, -128, 127, per_sample=True)


@dataclass(frozen=True)
class Alone:
    """A layer quantized alone: SQNR at its own output and the worst at the model's outputs."""

    at_layer: float
    at_output: float
    samples: int
    module: str = ""  # the module whose weight it is, where found by value (else the format's name stands)


@dataclass(frozen=True)
class QuantizedLayer:
    module: str  # the module path the format's layer table names
    weight: np.ndarray  # the float weight in the artifact's layout (BatchNorm folded in, maybe)
    weight_quantized: np.ndarray  # the artifact's weight, dequantized, same layout
    input_quant: InputQuant | None  # None: weight-only compression


def _layouts(artifact: np.ndarray, shape: tuple[int, ...]):
    """Candidate views of an artifact weight in PyTorch's layout (out channels first)."""
    yield lambda a: a.reshape(shape)
    if artifact.ndim == 2:
        yield lambda a: a.T.reshape(shape)
    if artifact.ndim == 4:
        yield lambda a: a.transpose(0, 3, 1, 2).reshape(shape)  # TFLite OHWI -> OIHW
        yield lambda a: a.transpose(3, 0, 1, 2).reshape(shape)  # TFLite depthwise 1HW(C*m) -> (C*m)1HW
    if artifact.ndim == 3:
        yield lambda a: a.transpose(0, 2, 1).reshape(shape)


def substitute_weight(layer: QuantizedLayer, parameter: np.ndarray) -> np.ndarray | None:
    """The module's weight with the artifact's quantization error, or None when the artifact's weight
    is not this parameter (up to layout and a per-output-channel scale)."""
    if layer.weight.size != parameter.size:
        return None
    rows = parameter.reshape(len(parameter), -1).astype(np.float64)
    for view in _layouts(layer.weight, parameter.shape):
        try:
            folded = view(layer.weight).reshape(len(parameter), -1).astype(np.float64)
        except ValueError:
            continue
        norms = np.sum(rows * rows, axis=1)
        scale = np.divide(np.sum(folded * rows, axis=1), norms, out=np.zeros_like(norms), where=norms > 0)
        residual = np.linalg.norm(folded - scale[:, None] * rows)
        if residual > _FOLD_TOLERANCE * max(np.linalg.norm(folded), 1e-12) or np.any(scale[norms > 0] == 0):
            continue
        quantized = view(layer.weight_quantized).reshape(len(parameter), -1).astype(np.float64)
        safe = np.where(scale == 0, 1.0, scale)
        return (quantized / safe[:, None]).reshape(parameter.shape).astype(parameter.dtype)
    return None


def _fake_quant(x, quant: InputQuant):
    import torch

    if quant.per_sample:
        rows = x.reshape(len(x), -1)
        low, high = rows.amin(1).clamp(max=0.0), rows.amax(1).clamp(min=0.0)
        scale = ((high - low) / (quant.qmax - quant.qmin)).clamp(min=1e-12)
        zero = torch.round(quant.qmin - low / scale)
        q = torch.clamp(torch.round(rows / scale[:, None]) + zero[:, None], quant.qmin, quant.qmax)
        return ((q - zero[:, None]) * scale[:, None]).reshape(x.shape)
    q = torch.clamp(torch.round(x / quant.scale) + quant.zero_point, quant.qmin, quant.qmax)
    return (q - quant.zero_point) * quant.scale


class _Sums:
    """Signal and noise energy, accumulated over batches, for an SQNR."""

    def __init__(self) -> None:
        self.signal = self.noise = 0.0
        self.finite = True

    def add(self, reference: np.ndarray, value: np.ndarray) -> None:
        reference, value = reference.astype(np.float64), value.astype(np.float64)
        self.finite &= bool(np.all(np.isfinite(value)))
        self.signal += float(np.sum(reference * reference))
        self.noise += float(np.sum((value - reference) ** 2))

    def sqnr_db(self) -> float:
        from validators.parity import SQNR_CAP_DB, sqnr_from_energies

        return round(sqnr_from_energies(self.signal, self.noise), 3) if self.finite else -SQNR_CAP_DB


def _batches(feeds: dict[str, np.ndarray], names: list[str], size: int):
    """Unpadded chunks of `size` samples, as tensors in forward-argument order."""
    import torch

    for start in range(0, sample_count(feeds), size):
        yield [torch.from_numpy(np.ascontiguousarray(feeds[n][start:start + size])) for n in names]


def _affordable_samples(forward, one_batch, layers: int, total: int, batch: int | None) -> int:
    """As many samples as FLOP_BUDGET affords for one forward per layer, at least MIN_SAMPLES: counted
    (torch's FLOP counter on one batch), not timed, so the same export gives the same table."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            forward(one_batch)
        per_sample = counter.get_total_flops() / (batch or 1)
    except Exception:  # an op the counter cannot follow: measure on every sample
        return total
    samples = min(total, max(MIN_SAMPLES, int(FLOP_BUDGET / max(per_sample * layers, 1.0))))
    return max(batch, samples // batch * batch) if batch not in (None, 1) else samples


def alone_sqnr(module, input_names: list[str], layers: list[QuantizedLayer | None], feeds: dict[str, np.ndarray],
               batch: int | None) -> list[Alone | None]:
    """Each layer quantized alone (an Alone), in the eager model; None for a layer whose weight matches
    no module parameter (the format then measures it its own way). Runs the eager model in batches of
    32 samples (the traced batch if it insists), on as many of the samples as FLOP_BUDGET affords, and
    at least MIN_SAMPLES."""
    import torch

    from exporter.trace import flatten_outputs

    weighted = {path: m for path, m in module.named_modules()  # an embedding's weight is a table, not a layer
                if isinstance(getattr(m, "weight", None), torch.nn.Parameter) and m.weight.ndim >= 2
                and not isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag)}
    targets = [_owner(layer, weighted) if layer is not None else (None, None, "") for layer in layers]
    if all(s is None for _, s, _ in targets):
        return [None] * len(layers)

    size = 32 if batch in (None, 1) else batch

    def forward(args) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.detach().float().numpy() for t in flatten_outputs(module(*args))]

    placed = sum(s is not None for _, s, _ in targets)
    samples = _affordable_samples(forward, next(_batches(feeds, input_names, batch or 1)), placed,
                                  sample_count(feeds), batch)
    feeds = {k: v[:samples] for k, v in feeds.items()}
    try:
        reference = [forward(args) for args in _batches(feeds, input_names, size)]
    except Exception:  # a model that insists on its traced batch
        size = batch or 1
        reference = [forward(args) for args in _batches(feeds, input_names, size)]

    return [None if substituted is None else
            _alone(owner, substituted, path, layer.input_quant, forward, _batches(feeds, input_names, size), reference,
                   samples)
            for layer, (owner, substituted, path) in zip(layers, targets, strict=True)]


def _alone(owner, substituted: np.ndarray, path: str, quant: InputQuant | None, forward, batches, reference: list,
           samples: int) -> Alone:
    """One layer alone: a forward hook runs the module with its quantized weight (and input) and passes
    that output on, measured at the layer and at the model's outputs."""
    import torch

    at_layer, new_weight = _Sums(), torch.from_numpy(substituted)

    def hook(mod, args, output):
        quantizable = quant is not None and args and torch.is_floating_point(args[0])
        inputs = (_fake_quant(args[0], quant), *args[1:]) if quantizable else args
        original = mod.weight.data
        mod.weight.data = new_weight
        try:
            alone = mod.forward(*inputs)  # forward, not __call__: this hook must not fire again
        finally:
            mod.weight.data = original
        at_layer.add(output.detach().numpy(), alone.detach().numpy())
        return alone

    handle = owner.register_forward_hook(hook)
    try:
        per_output = None
        for args, expected in zip(batches, reference, strict=True):
            got = forward(args)
            per_output = per_output or [_Sums() for _ in got]
            for sums, r, g in zip(per_output, expected, got, strict=True):
                sums.add(r, g)
    finally:
        handle.remove()
    return Alone(at_layer.sqnr_db(), min(s.sqnr_db() for s in per_output), samples, path)


def _owner(layer: QuantizedLayer, weighted: dict) -> tuple:
    """(module, substituted weight, its path) for the module holding the layer's weight: the one the
    format names, else a sibling (a converter's name can be a neighbour's: key and value called query)."""
    parent = layer.module.rpartition(".")[0]
    candidates = [layer.module] + [p for p in weighted if p != layer.module and p.startswith(parent)]
    for path in candidates:
        owner = weighted.get(path)
        substituted = substitute_weight(layer, owner.weight.detach().numpy()) if owner is not None else None
        if substituted is not None:
            return owner, substituted, path
    return None, None, ""
