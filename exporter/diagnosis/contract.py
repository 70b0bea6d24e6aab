"""What the diagnosis stage asks of a format: its weighted layers (Layer) and a LayerQuantizer that blames
them and rewrites a variant with some kept in float. It lives here, below the formats, so a format
implements it and the diagnosis stage never imports a format."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from exporter.options import Progress  # noqa: F401  (what a LayerQuantizer reports through)


@dataclass(frozen=True)
class Layer:
    """A weighted layer of an artifact's graph, the unit per-layer blame ranks and auto precision
    keeps in float. One type for every format; the format fills what its graph has."""

    node: str  # the graph node (ONNX node, TFLite operator output, MIL op)
    op: str
    module: str  # the PyTorch module path it came from ('' when unknown)
    tensor: str  # the tensor whose value measures the layer (its output)
    quantized_tensor: str = ""  # that tensor's name in the quantized graph, when it differs
    weight: str = ""  # the weight constant's name, where the format compresses by name
    operators: tuple[int, ...] = ()  # TFLite: the operator indices this layer covers
    scopes: tuple[str, ...] = ()  # TFLite: ai-edge-quantizer's regex scopes selecting it


class LayerQuantizer(Protocol):
    """What the diagnosis stage needs from a format: the blame table of a quantized variant, and a way
    to rewrite it with some layers kept in float."""

    weighted_layers: int

    def blame(self, out: Path, feeds: dict[str, np.ndarray], progress: Progress) -> list[dict]: ...

    def keep_float(self, rows: list[dict], out: Path) -> list[str]:
        """Rewrite `out` with these layers in float; the graph nodes kept out of the quantized scheme."""

    def record_kept(self, quantization: dict | None, kept: list[str]) -> dict | None:
        """The variant's quantization record once `kept` stayed float."""


Node = TypeVar("Node")


def feeding_chain(inputs: Iterable[str], producers: Mapping[str, Node], is_weighted: Callable[[Node], bool],
                  name: Callable[[Node], str], inputs_of: Callable[[Node], Iterable[str]]) -> list[str]:
    """The names of the non-weighted nodes producing `inputs`, and theirs, back to the previous weighted
    node: a quantizer quantizes a tensor where it is produced (a Mul, a Relu), so a layer kept in float
    needs that chain in float too. One walk for every format's graph."""
    found: list[str] = []
    stack = list(inputs)
    while stack:
        producer = producers.get(stack.pop())
        if producer is None or is_weighted(producer) or name(producer) in found:
            continue
        found.append(name(producer))
        stack.extend(inputs_of(producer))
    return found
