"""The blame table every format's layer quantizer builds: the row each layer gets, how its error is
measured (alone in PyTorch, exporter.diagnosis.alone, or alone in the artifact's runtime), the ranking.

A format supplies the graph-specific parts: which layers are weighted, the values of named tensors
in a model, what quantization did to each layer, and how to quantize one layer alone where PyTorch
cannot place it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.batching import sample_count
from exporter.diagnosis.contract import Layer
from validators.parity import SQNR_CAP_DB, output_parity

BLAME_SAMPLES = 64  # eval samples the diagnosis runs on (the first ones, so it is deterministic)


def blame_feeds(inputs: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
    """The first BLAME_SAMPLES eval samples, in whole batches: an intermediate tensor need not have
    the batch as its first dimension, so a zero-padded batch could not be cut back to the real rows."""
    total = min(BLAME_SAMPLES, sample_count(inputs))
    if batch:
        total = max(batch, total // batch * batch)
    return {k: v[:total] for k, v in inputs.items()}


def weight_matrices(module) -> dict[str, list[np.ndarray]]:
    """Module path -> the weight matrices and kernels (parameters of 2 or more dims) it owns: the
    modules a weighted graph op can belong to (a BatchNorm folded into a conv owns only vectors)."""
    return {path: [p.detach().numpy() for p in child.parameters(recurse=False) if p.ndim >= 2]
            for path, child in module.named_modules() if any(p.ndim >= 2 for p in child.parameters(recurse=False))}


def sqnr_db(reference: np.ndarray, value: np.ndarray) -> float:
    if value.shape != reference.shape and value.size == reference.size:
        value = value.reshape(reference.shape)  # another quantizer's graph holds it folded (N,H,W,C vs N,HW,C)
    sqnr = output_parity(reference, value)["sqnr_db"]
    return -SQNR_CAP_DB if sqnr is None else round(sqnr, 3)  # None: NaN/Inf in the value, the worst there is


ALONE_IN_PYTORCH = "pytorch, the layer's quantized weight and input substituted"
ALONE_IN_ARTIFACT = "the artifact's runtime, the model quantized at that layer only"


FLOAT_IN_ARTIFACT = "not measured: the artifact keeps this layer's weights float, so alone it adds no error"


def float_alone(samples: int):
    """A layer the artifact leaves float (a recipe's choice): quantizing nothing, it adds no error alone.
    Measuring it "quantized alone" would cost a whole run of the model per layer for a figure that
    describes no artifact (a MobileViT's 34 such layers made its TFLite int8 blame 137 s instead of 27)."""
    from exporter.diagnosis.alone import Alone

    return Alone(SQNR_CAP_DB, SQNR_CAP_DB, samples)


def alone_from_values(reference_layer: np.ndarray, alone_layer: np.ndarray, reference_outputs: list[np.ndarray],
                      alone_outputs: list[np.ndarray]):
    """A model quantized at one layer only, run by the artifact's runtime: an Alone."""
    from exporter.diagnosis.alone import Alone

    return Alone(sqnr_db(reference_layer, alone_layer),
                 min(sqnr_db(r, a) for r, a in zip(reference_outputs, alone_outputs, strict=True)),
                 len(reference_outputs[0]))


@dataclass(frozen=True)
class BlameRow:
    """One layer's line of the table: its own error (only it quantized) at itself and at the model's
    output, measured as `alone_measured_by` says, and the error accumulated up to it with everything
    quantized. `module` is the module found by the weight's value, where it was, else the layer's."""

    layer: Layer
    module: str
    sqnr_db_alone_at_output: float
    sqnr_db_alone_at_layer: float
    sqnr_db_accumulated: float
    alone_measured_by: str
    alone_samples: int
    samples: int

    @property
    def name(self) -> str:
        return self.module or self.layer.node

    def to_json(self) -> dict:
        row = {"module": self.module, "node": self.layer.node, "op": self.layer.op,
               "sqnr_db_alone_at_output": self.sqnr_db_alone_at_output,
               "sqnr_db_alone_at_layer": self.sqnr_db_alone_at_layer,
               "sqnr_db_accumulated": self.sqnr_db_accumulated,
               "tensor": self.layer.tensor, "quantized_tensor": self.layer.quantized_tensor or self.layer.tensor,
               "alone_measured_by": self.alone_measured_by, "alone_samples": self.alone_samples,
               "samples": self.samples}
        if self.layer.weight:
            row["weight"] = self.layer.weight  # what keeping it float names (Core ML compresses by weight)
        return row


def blame_row(layer: Layer, *, reference_layer: np.ndarray, accumulated_layer: np.ndarray,
              alone, alone_by: str, samples: int) -> BlameRow:
    return BlameRow(layer, alone.module or layer.module, alone.at_output, alone.at_layer,
                    sqnr_db(reference_layer, accumulated_layer), alone_by, alone.samples, samples)


def alone_in_pytorch(traced, layers: list, feeds: dict[str, np.ndarray]) -> list:
    """exporter.diagnosis.alone on the traced model's eager module, where there is one (not TorchScript);
    None for the layers it cannot place (the format measures those in its runtime)."""
    from exporter.diagnosis.alone import alone_sqnr

    if traced is None or traced.loaded.kind != "module" or not any(layers):
        return [None] * len(layers)
    return alone_sqnr(traced.loaded.module, traced.loaded.input_names, layers, feeds, traced.batch)


def most_harmful_first(rows: list[BlameRow]) -> list[BlameRow]:
    # ties keep graph order (sorted is stable), so the table is deterministic
    return sorted(rows, key=lambda r: r.sqnr_db_alone_at_output)
