"""Causal language-model sources: a local Hugging Face folder, a GGUF file, demo:tinylm, or a factory
returning a transformers causal LM (with its tokenizer).

Nothing is downloaded (local files only) and a repository's own code never runs (trust_remote_code is
never set). Pickled *.bin weights are loaded only with --trust-pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import UserInputError

DEFAULT_CHAT_PROMPTS = (
    "What is the capital of France?",
    "Explain in one sentence why the sky is blue.",
    "Write a short reminder to charge the car tonight.",
)


@dataclass
class CausalLM:
    name: str
    source: str  # the SPEC as given
    kind: str  # "hf-folder" | "gguf" | "demo" | "factory"
    model: Any  # a transformers causal LM, float32, eval mode
    tokenizer: Any
    sha256: str
    prompts: tuple[str, ...]  # raw prompts; the chat template (when the tokenizer has one) is applied on use
    eval_text: str
    folder: Path | None = None  # an HF folder with these exact weights (what onnxruntime-genai's builder reads)
    notes: list[str] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_prompt(self, prompt: str) -> list[int]:
        from validators.lm.prompt_recipe import encode_prompt  # the same encoding `edgeport generate` uses

        return encode_prompt(self.tokenizer, prompt, self.chat)

    def save_folder(self, path: Path) -> Path:
        """Write the weights (safetensors), config and tokenizer as a Hugging Face folder."""
        if self.folder is not None:
            return self.folder
        model = self.model
        if getattr(model, "hf_quantizer", None) is not None:  # a GGUF load: rebuild a plain float model
            plain = type(model)(model.config)
            plain.load_state_dict(model.state_dict())
            if hasattr(plain.config, "quantization_config"):
                del plain.config.quantization_config
            model = plain
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.folder = path
        return path


def is_causal_lm_spec(spec: str) -> bool:
    """Whether a SPEC names a language-model source by its form alone (a factory is told by what it returns); a
    Hugging Face folder of an encoder (BertModel, ...) is not one."""
    path = Path(spec.removeprefix("hf:"))
    if spec.startswith("hf:") or path.is_dir():
        return hf_encoder(path) is None
    return spec == "demo:tinylm" or spec.endswith(".gguf")


def hf_encoder(folder: Path) -> str | None:
    """The architecture of a Hugging Face folder that holds something other than a causal LM (an encoder such
    as BertModel), read from its config.json; None for a causal LM or a folder that cannot tell."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return _encoder_architecture(config) if isinstance(config, dict) else None


def _encoder_architecture(config: dict) -> str | None:
    """The first of a config's architectures when none of them is a causal LM head."""
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return str(architectures[0])
    return None


def refuse_encoder_folder(spec: Any) -> None:
    """A SPEC naming a Hugging Face encoder folder, refused for either target kind with the route that exports it."""
    if isinstance(spec, str) and (encoder := hf_encoder(Path(spec.removeprefix("hf:")))) is not None:
        raise encoder_folder_error(spec, encoder)


def encoder_folder_error(folder: str, architecture: str) -> UserInputError:
    """An encoder folder is a classic source, exported through a factory that wraps it (the README's encoder
    example): say so instead of sending the user between target kinds."""
    return UserInputError(f"{folder} holds a {architecture} (an encoder, not a causal language model): export it "
                          "with an image/text target such as android, through a factory file.py:build that returns "
                          "(a module wrapping AutoModel.from_pretrained(folder), example_inputs), as the README's "
                          "encoder example does")


def load_causal_lm(spec: str, *, trust_pickle: bool = False) -> CausalLM:
    if spec == "demo:tinylm":
        return _demo()
    if spec.endswith(".gguf"):
        return _gguf(Path(spec), spec)
    if spec.startswith("hf:") or Path(spec).is_dir():
        return _hf_folder(Path(spec.removeprefix("hf:")), spec, trust_pickle)
    raise UserInputError(f"--model {spec!r} is not a language-model source; use a Hugging Face folder "
                         "(config.json + *.safetensors + tokenizer), a .gguf file, demo:tinylm or file.py:factory")


def source_size(spec: str) -> tuple[int, int] | None:
    """(parameters, vocabulary) of a folder or GGUF source, read from tensor headers without loading a weight; None
    for a source whose size is only known once it is built (demo:tinylm, a factory) or that cannot be read (the
    loader then names what is wrong)."""
    path = Path(spec.removeprefix("hf:"))
    try:
        if spec.endswith(".gguf") and path.is_file():
            from gguf import GGUFReader

            tensors = GGUFReader(str(path)).tensors
            table = next(t for t in tensors if t.name == "token_embd.weight")
            return sum(int(t.n_elements) for t in tensors), int(max(table.shape))  # (hidden, vocabulary) in GGUF order
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        config = config.get("text_config", config)
        parameters = 0
        for weights in sorted(path.glob("*.safetensors")):
            from safetensors import safe_open

            with safe_open(str(weights), framework="np") as opened:
                parameters += sum(math.prod(opened.get_slice(k).get_shape()) for k in opened.keys())  # noqa: SIM118
        if not parameters:  # pickled weights: their bytes at the config's dtype
            width = {"float32": 4, "float16": 2, "bfloat16": 2}.get(config.get("torch_dtype"), 4)
            parameters = sum(f.stat().st_size for f in path.glob("*.bin")) // width
        return parameters, int(config["vocab_size"])
    except Exception:  # noqa: BLE001  a damaged source is named by its loader, after this estimate is skipped
        return None


def causal_lm_from_module(module: Any, tokenizer: Any, spec: str, name: str) -> CausalLM:
    """A factory's model (and tokenizer): it must be a transformers causal LM."""
    if not _is_causal_lm(module):
        raise UserInputError(f"{spec} returned a {type(module).__name__}, not a transformers causal language model "
                             "(…ForCausalLM); language-model targets need one")
    if tokenizer is None:
        raise UserInputError(f"{spec}: a language model needs its tokenizer; return (model, tokenizer) from the "
                             "factory")
    from exporter.lm.corpus import stdlib_text

    return CausalLM(name, spec, "factory", _float_eval(module), tokenizer, _weights_sha256(module),
                    DEFAULT_CHAT_PROMPTS, stdlib_text("eval"))


def _is_causal_lm(module: Any) -> bool:
    try:
        from transformers import GenerationMixin, PreTrainedModel
    except ModuleNotFoundError:
        return False
    return isinstance(module, PreTrainedModel) and isinstance(module, GenerationMixin)


def _float_eval(model: Any) -> Any:
    import torch

    return model.to(torch.float32).eval()


def _weights_sha256(model: Any) -> str:
    from exporter.sources import state_dict_sha256

    return state_dict_sha256(model)


def _demo() -> CausalLM:
    from exporter.lm.corpus import stdlib_text
    from exporter.lm.tinylm import PROMPTS, load_tinylm

    model, tokenizer = load_tinylm()
    return CausalLM("tinylm", "demo:tinylm", "demo", model, tokenizer, _weights_sha256(model), PROMPTS,
                    stdlib_text("eval"),
                    notes=["demo:tinylm: trained on the standard library's docstrings; eval text is the "
                           "held-out modules' docstrings"])


def _architecture(config: dict, where: str) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if (encoder := _encoder_architecture(config)) is not None:
        raise encoder_folder_error(where, encoder)
    model_type = config.get("model_type")
    known = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) if model_type else None
    if known is None:
        if config.get("auto_map"):
            raise UserInputError(f"{where}: model_type {model_type!r} needs the repository's own code (auto_map); "
                                 "edgeport never runs a model repository's code: use a model transformers knows")
        raise UserInputError(f"{where}: model_type {model_type!r} is not a causal language model transformers knows; "
                             "language-model targets take decoder-only models (Llama, Qwen2, Phi3, Gemma, ...)")
    return known


def _hf_folder(folder: Path, spec: str, trust_pickle: bool) -> CausalLM:
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder; pass a Hugging Face model folder (config.json + weights)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserInputError(f"{folder} has no config.json; pass the folder save_pretrained wrote "
                             "(config.json, *.safetensors, tokenizer files)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{config_file} is not valid JSON ({exc}); re-save the model") from None
    _architecture(config, str(folder))
    safetensors = sorted(folder.glob("*.safetensors"))
    pickled = sorted(folder.glob("*.bin"))
    if not safetensors and not pickled:
        raise UserInputError(f"{folder} has no weights (*.safetensors); save the model with save_pretrained")
    if not safetensors and not trust_pickle:
        raise UserInputError(f"{folder} has only pickled weights ({pickled[0].name}), which run code when loaded; "
                             "convert them to safetensors, or pass --trust-pickle if you trust the file")
    for weights in safetensors:
        _check_safetensors(weights)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise UserInputError(f"{folder}: no usable tokenizer ({_first(exc)}); save the tokenizer beside the model "
                             "(tokenizer.json / tokenizer_config.json)") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, trust_remote_code=False,
                                                     dtype="float32", use_safetensors=bool(safetensors))
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserInputError(f"{folder}: the weights do not load ({_first(exc)}); check the folder is complete") \
            from None
    from exporter.lm.corpus import stdlib_text

    name = folder.resolve().name or "model"
    return CausalLM(name, spec, "hf-folder", _float_eval(model), tokenizer, _weights_sha256(model),
                    DEFAULT_CHAT_PROMPTS, stdlib_text("eval"), folder=folder if safetensors else None)


def _check_safetensors(path: Path) -> None:
    """A weights file whose header or tensors do not fit in it (cut short, overwritten) is named, not loaded."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as weights:
            for key in weights.keys():  # noqa: SIM118  safe_open is not a mapping
                weights.get_slice(key)
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        raise UserInputError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {_first(exc)}); "
                             "re-save the model with save_pretrained") from None


def _gguf(path: Path, spec: str) -> CausalLM:
    if not path.is_file():
        raise UserInputError(f"GGUF file {path} does not exist")
    import importlib.util

    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise UserInputError(f"reading a GGUF file needs the {package} package; `pip install {package}` "
                                 "(make install installs it)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    except Exception as exc:  # the loader raises many types on a file it cannot read
        raise UserInputError(f"{path}: transformers' GGUF loader cannot read it ({_first(exc)}); it takes the "
                             "architectures and quantization types transformers lists for GGUF") from None
    if not _is_causal_lm(model):
        raise UserInputError(f"{path} holds a {type(model).__name__}, not a causal language model")
    from exporter.lm.corpus import stdlib_text

    return CausalLM(path.stem, spec, "gguf", _float_eval(model), tokenizer, _weights_sha256(model),
                    DEFAULT_CHAT_PROMPTS, stdlib_text("eval"),
                    notes=[f"the float reference is {path.name} dequantized to float32 by transformers' GGUF loader: "
                           "its quantization error is part of the reference, not of the artifacts"])


def _first(exc: BaseException) -> str:
    from common.errors import first_line

    return first_line(exc, 200)
