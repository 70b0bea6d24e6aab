"""Model kinds as plug-ins: the pipeline and the CLI ask this registry, never a kind's name.

A kind is one module exposing KIND (the ModelKind below): the targets that are its own (a target's `kind`),
the model sources it claims, its embedded default model, how `edgeport targets` describes its targets, and
its export. What an export wrote is judged by the kind's judge (validators/judges/). The registry maps names
to modules, imported only when a kind is used, so `edgeport --help` imports none."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from exporter.errors import UserInputError

KINDS = {"tensor": "exporter.kinds.tensor", "causal-lm": "exporter.kinds.causal_lm"}


class ModelKind(Protocol):
    name: str  # as targets and manifests name it
    default_model: str  # the embedded demo `edgeport export` uses without --model
    sources: str  # what it exports, for messages: "a causal language model"
    targets: str  # what its targets are called, for messages: "a language-model target"

    def claims(self, spec: Any) -> bool:
        """Whether this model source is of this kind whatever the target (a source no kind claims is tensor's)."""

    def describe(self, target: Any) -> list[str]:
        """`edgeport targets`: the lines under the target's name."""

    def export(self, options: Any, target: Any, progress: Callable[[str], None]) -> tuple[Path, dict]:
        """Load, convert, diagnose, write the manifest, validate and report; returns (directory, report)."""


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
