"""The export's options, declared once. ExportOptions is what the pipeline reads; each field's metadata says how
the command line spells it (its flag and help) and how a build file takes it (a path, a true/false flag or a list,
under the flag's name: --output-kind is output_kind). The CLI's export command, the Python API's export(), the
build file and the language-model kind's refusals all read this declaration (tests/test_options.py holds them to
it). Light: no torch, so `edgeport --help` reads it at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Progress = Callable[[str], None]  # how every stage reports a long step: one line at a time
PATH, FLAG, LIST = "path", "flag", "list"  # how a build file's [[models]] entry takes an option


def _option(default: Any = None, *, flag: str = "", help: str = "", build: str = "", factory: Any = None) -> Any:
    metadata = {"flag": flag, "help": help, "build": build}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ExportOptions:
    model: Any = _option(flag="--model", help=(
        "demo:digits | path/file.py:factory | package.module:factory | model.pt2 | TorchScript file; language models "
        "(with an -llm target): demo:tinylm | a Hugging Face folder (hf:DIR) | model.gguf. Default: demo:digits, "
        "or demo:tinylm for an -llm target."))  # in Python also an nn.Module (then example_inputs)
    target: str = _option("android", flag="--target", help=(
        "A built-in target (see `edgeport targets`) or the path of your own .toml profile."))
    out: Path = _option(Path("artifacts"), flag="--out", help="Artifacts go to OUT/<model>/<target>/.")
    calib: Path | dict | None = _option(flag="--calib", build=PATH, help=(
        "Calibration data for static int8: .npz keyed by input name, or a folder of .npy files. For a language "
        "model whose variant uses method = \"gptq\": a UTF-8 text file (default: stdlib docstrings)."))
    eval: Path | dict | None = _option(flag="--eval", build=PATH, help=(
        "Evaluation data (.npz / .npy folder); a `labels` array adds task accuracy. For a language model: a UTF-8 "
        "text file (default: held-out stdlib docstrings)."))
    example_inputs: Any = _option()  # Python only: the module's example inputs (or a language model's tokenizer)
    inputs: list = _option(flag="--input", build=LIST, factory=list, help=(
        "NAME:1x3x224x224:float32, once per forward argument, when the model has no example inputs."))
    dynamic_batch: bool = _option(False, flag="--dynamic-batch", build=FLAG, help=(
        "Make dim 0 dynamic where the format allows."))
    weights: Path | None = _option(flag="--weights", build=PATH, help=(
        "A state dict to load (weights_only) into the factory's module."))
    trust_pickle: bool = _option(False, flag="--trust-pickle", build=FLAG, help=(
        "Allow full unpickling of a torch.save'd module. Runs code from the file: only for files you trust."))
    name: str | None = _option(flag="--name", help="Model name for the artifact directory.")
    auto_precision: bool | None = _option(flag="--auto-precision", build=FLAG, help=(
        "Keep the most harmful layers of a quantized variant (static int8 ONNX/TFLite, compressed Core ML; a "
        "language model's decoder linears at 8 bits) at higher precision until it meets its budget (default: the "
        "target's auto_precision)."))  # None: as the target profile says
    prune: list = _option(flag="--prune", build=LIST, factory=list, help=(
        "KEY=VALUE of the target's [prune] table, once per key (over the target's own): structured pruning before "
        "lowering, recovered by distillation on --calib, e.g. --prune max_macs_ratio=0.5 (or max_params_ratio, "
        "max_latency_ms; recovery_steps, budget.min_cosine, ...). Artifacts are judged against the pruned model by "
        "their budgets and against the unpruned one by the prune budget (default: accuracy drop <= 0.005, top-1 "
        "agreement >= 0.95; a language model loses whole decoder layers, distilled on the calibration text, judged by "
        "budget.max_ppl_ratio, default 1.5)."))
    allow_synthetic_eval: bool = _option(False, flag="--allow-synthetic-eval", build=FLAG, help=(
        "Let a verdict rest on synthetic eval inputs (no --eval and no bundled data). Without it such a run is "
        "provisional: exit 1, report.json passed=false with the reason."))
    memory_limit: float | None = _option(flag="--memory-limit", help=(
        "The memory (GB) the export may use. A language model whose export is estimated to need more (from its "
        "parameter count and vocabulary, read before loading) is refused before any long step. Default: what this "
        "machine has available (MemAvailable, or the cgroup's limit)."))
    output_kinds: dict = _option(flag="--output-kind", build=LIST, factory=dict, help=(
        "NAME:KIND, how an output is judged: classification (top-1 agreement, cosine, SQNR, max_abs), embedding "
        "(cosine, SQNR, max_abs; never its argmax), regression (SQNR, max_abs), tensor. Default: inferred "
        "(unit-norm rows: embedding; N x C: classification). A model can also declare them as its "
        "`edgeport_output_kinds` attribute, e.g. {'output': 'embedding'}."))

    def __post_init__(self) -> None:
        """Command-line and build-file spellings of inputs and output kinds, parsed once for every caller."""
        from exporter.specs import TensorSpec, parse_input_spec, parse_output_kind

        self.inputs = [s if isinstance(s, TensorSpec) else parse_input_spec(s) for s in self.inputs or []]
        if not isinstance(self.output_kinds, dict):
            self.output_kinds = dict(parse_output_kind(s) for s in self.output_kinds or [])


OPTIONS = {f.name: f.metadata for f in dataclasses.fields(ExportOptions)}


def flag(name: str) -> str:
    return OPTIONS[name]["flag"]


def help_of(name: str) -> str:
    return OPTIONS[name]["help"]


def build_key(name: str) -> str:
    """The option's key in a build file's [[models]] entry: its flag without dashes (--output-kind: output_kind)."""
    return flag(name)[2:].replace("-", "_")


def build_keys(kind: str) -> tuple[str, ...]:
    """The build-file keys taken as `kind` (PATH, FLAG or LIST)."""
    return tuple(build_key(name) for name, meta in OPTIONS.items() if meta["build"] == kind)
