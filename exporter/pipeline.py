"""`edgeport export` for every model kind: load the target, check where it goes, hand the model to the
plug-in of the target's kind (exporter/kinds/), which converts, validates and reports."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.lm.source import refuse_encoder_folder
from exporter.specs import TensorSpec
from exporter.staging import check_output_place
from targets import load_target

Progress = Callable[[str], None]


@dataclass
class ExportOptions:
    model: Any  # a SPEC string, or an nn.Module (then example_inputs)
    target: str
    out: Path = Path("artifacts")
    calib: Path | dict | None = None  # a file, or arrays keyed by input name (plus labels)
    eval: Path | dict | None = None
    example_inputs: tuple | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    dynamic_batch: bool = False
    weights: Path | None = None
    trust_pickle: bool = False
    name: str | None = None
    auto_precision: bool | None = None  # None: as the target profile says
    allow_synthetic_eval: bool = False  # let a verdict on synthetic eval inputs pass (else it is provisional)
    output_kinds: dict[str, str] = field(default_factory=dict)  # output name -> kind, over what is inferred


def run_export(options: ExportOptions, progress: Progress) -> tuple[Path, dict]:
    """The one entry for every model kind: the target names its kind, the kind's plug-in does the export."""
    from exporter.kinds import kind_of_source, model_kind

    target = load_target(options.target)  # fail on a bad target before any heavy work
    check_output_place(options.out)
    if options.auto_precision is not None:
        target = dataclasses.replace(target, auto_precision=options.auto_precision)
    refuse_encoder_folder(options.model)  # a source no kind exports
    kind = model_kind(target.kind)
    if options.model is None:
        options.model = kind.default_model
    return kind_of_source(options.model, kind).export(options, target, progress)
