"""The contract every format implements for language models, beside the classic Backend
(exporter/formats/base.py). The LM pipeline owns the reference, blame, auto precision, manifest and
verdict; a format only says how to lower the model once and emit one precision:

    lower(lm, settings, scratch, progress)             -> whatever its variants share (a traced program)
    emit(lowered, variant, settings, out, kept, plan, ...) -> LmEmitted: one variant written to `out`

`kept` maps decoder-linear module paths (model.layers.3.mlp.down_proj) to the weight bits auto precision
keeps them at (None: float). `plan` gives each linear's codes, scales and zero points for a scheme and method,
computed once per export in PyTorch (exporter/quant/plan.py): ONNX writes them as they are; ExecuTorch, LiteRT
and Core ML still round to nearest with their own quantizers. The artifact's runtime for the verdict and the
speed figures is validators/lm/runtime.open_lm, chosen by the manifest entry's format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from exporter.lm.source import CausalLM
from exporter.options import Progress
from exporter.quant.plan import Planner
from targets.lm import LmSettings, LmVariant

Kept = dict[str, int | None]


@dataclass
class LmEmitted:
    cache: dict  # how a runtime feeds the artifact: its I/O names, cache geometry (the manifest's `cache`)
    quantization: dict  # the scheme and its settings ({"scheme": "fp32"} for the traced program itself)
    built_by: str
    why: str  # why this path was taken for the variant
    extra_files: list[Path] = field(default_factory=list)  # beside `out` (an ONNX graph's .data)


class LmBackend(Protocol):
    format: ClassVar[str]
    # why emit cannot keep a linear in float (auto precision of an 8-bit variant); "" when it can. Every format
    # keeps the linears of a 4-bit variant at 8 bits.
    cannot_keep_in_float: ClassVar[str]
    # what its attention computes beyond causal attention over the cache: a sliding window per layer, and
    # soft-capped scores (exporter/lm/attention.py refuses a model that needs what the format lacks)
    computes_windows: ClassVar[bool]
    computes_softcap: ClassVar[bool]

    def lower(self, lm: CausalLM, settings: LmSettings, scratch: Path, progress: Progress) -> Any: ...

    def emit(self, lowered: Any, variant: LmVariant, settings: LmSettings, out: Path, kept: Kept | None,
             plan: Planner, progress: Progress) -> LmEmitted: ...

    # Optional: `bundle(work, entries, model_config, tokenizer_dir, threads) -> dict | None` writes, beside the
    # format's artifacts, what its runtime's own app-side loader opens (onnxruntime-genai's genai_config.json),
    # and returns the manifest's record ({runtime, files, ...}).


# the source tokenizer's files an app-side runtime loads from beside the artifacts (onnxruntime-genai's
# onnxruntime-extensions and ExecuTorch's pytorch-tokenizers both read tokenizer.json and tokenizer_config.json)
BUNDLED_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def bundle_tokenizer(tokenizer_dir: Path, work: Path) -> tuple[Any, list[str]]:
    """The source tokenizer's files copied beside the artifacts (the chat template written into
    tokenizer_config.json: transformers keeps it in chat_template.jinja, which neither runtime reads); returns
    (the tokenizer, the files copied). Every format's bundle writes the same files."""
    import json
    import shutil

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    copied = [name for name in BUNDLED_TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    for name in copied:
        shutil.copyfile(tokenizer_dir / name, work / name)
    if getattr(tokenizer, "chat_template", None) and "tokenizer_config.json" in copied:
        config_path = work / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config.setdefault("chat_template", tokenizer.chat_template)
        config_path.write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n")
    return tokenizer, copied


# module paths of the output head and the embedding table in transformers' decoders
HEAD, EMBEDDING = "lm_head", "model.embed_tokens"


def linear_modules(model: Any) -> list[str]:
    """Module paths of the decoder's linears: what weight quantization and per-layer blame act on."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith("model.")]
