"""Model kinds as plug-ins: the pipeline and the CLI ask this registry, never a kind's name.

A kind is one module exposing KIND (the ModelKind below): the targets that are its own (a target's `kind`),
the model sources it claims, its embedded default model, how `edgeport targets` describes its targets, and
how it prepares and writes an export (exporter/pipeline.py runs every other stage). What an export wrote is
judged by the kind's judge (validators/judges/). The registry maps names
to modules, imported only when a kind is used, so `edgeport --help` imports none."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from exporter.errors import UserInputError

KINDS = {"tensor": "exporter.kinds.tensor", "causal-lm": "exporter.kinds.causal_lm"}


@dataclass
class Written:
    """What a kind's export wrote into the staging directory, for the manifest and the export log."""

    artifacts: list[dict]  # one manifest entry per artifact: format, precision, path, bytes, sha256, budget, ...
    sections: dict  # the kind's own manifest sections ("trace", "inputs", "data"; "lm")
    reference: dict  # {"path": the reference file} and what else the kind records of it
    log: dict  # export.json: what the export measured on this host (timings), beside export_seconds


class Export(Protocol):
    """One prepared export: the model loaded and judged in PyTorch, nothing written yet."""

    name: str  # the artifact directory's model name: OUT/<name>/<target>/
    model: dict  # the manifest's model record: name, source, kind, sha256 (and what else the kind knows)
    libraries: tuple[str, ...]  # pip packages the manifest records beside torch, numpy and the formats'

    def write(self, work: Path, progress: Callable[[str], None]) -> Written:
        """Every artifact (stamped), the reference and the kind's files, into `work`."""


class ModelKind(Protocol):
    name: str  # as targets and manifests name it
    default_model: str  # the embedded demo `edgeport export` uses without --model
    sources: str  # what it exports, for messages: "a causal language model"
    targets: str  # what its targets are called, for messages: "a language-model target"
    data_files: str  # what its --calib and --eval read, for messages: "a UTF-8 text file"

    def claims(self, spec: Any) -> bool:
        """Whether this model source is of this kind whatever the target (a source no kind claims is tensor's)."""

    def describe(self, target: Any) -> list[str]:
        """`edgeport targets`: the lines under the target's name."""

    def memory_need(self, spec: Any, target: Any) -> Any:
        """What the export of `spec` to `target` is estimated to need (exporter/memory.Need), read before the model
        is loaded; None: no estimate for this source. Optional: a kind without it is not estimated."""

    def prepare(self, options: Any, target: Any, progress: Callable[[str], None]) -> Export:
        """Load the model, read the data, check the formats and compute the reference; nothing written yet
        (bad input is refused here, before a long step)."""


def register(name: str, module: str) -> None:
    """Add a kind from outside the product (a module exposing KIND); its targets name it as their `kind`."""
    KINDS[name] = module


def model_kind(name: str) -> ModelKind:
    return importlib.import_module(KINDS[name]).KIND


def kind_of_source(spec: Any, target_kind: ModelKind) -> ModelKind:
    """The target's kind, unless the source is another kind's: then a one-line refusal naming the targets
    that take it."""
    for name in KINDS:
        other = model_kind(name)
        if other.name != target_kind.name and other.claims(spec):
            from targets import builtin_target_names, load_target

            takers = [t for t in builtin_target_names() if load_target(t).kind == other.name]
            raise UserInputError(f"{spec} is {other.sources} source, which needs {other.targets} "
                                 f"({', '.join(takers)}); pass one as --target, or pass {target_kind.sources} here")
    return target_kind
