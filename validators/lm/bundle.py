"""The bundles beside a language model's artifacts, checked with the runtime's own app-side library: its
tokenizer, loaded as that library loads it, must encode the prompts (by the bundle's recipe) and the eval text
to the source tokenizer's ids and decode them to its text; its generation loop must write the tokens edgeport's
own run of the artifact wrote, up to end-of-sequence. One class per runtime: onnxruntime-genai
(exporter/formats/onnx/genai_bundle.py), ExecuTorch's LLM runner (exporter/formats/executorch/runner_bundle.py) and
LiteRT-LM (exporter/formats/tflite/litertlm_bundle.py); a Core ML app's tokenizer file alone
(exporter/formats/coreml/app_bundle.py), swift-transformers running only on Apple platforms.
"""

from __future__ import annotations

import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from validators.lm.metrics import first_difference
from validators.lm.prompt_recipe import apply_recipe, recipe_text


def _difference(source: Any, expected: list[int], got: list[int]) -> str:
    """Where two encodings of one text part: 'from token 4: 68 where the source tokenizer has 83 't''."""
    index = first_difference(expected, got)
    ours = got[index] if index < len(got) else "nothing (the text ended)"
    theirs = (f"{expected[index]} {source.decode([expected[index]])!r}" if index < len(expected)
              else "nothing (the text ended)")
    return f"from token {index}: {ours} where the source tokenizer has {theirs}"


def until_end_of_sequence(tokens: list[int], eos: set[int]) -> list[int]:
    """An app's loop ends at end-of-sequence; edgeport's verdict generates new_tokens past it."""
    return tokens[:next((i + 1 for i, t in enumerate(tokens) if t in eos), None)]


class BundleTokenizer:
    """A runtime's tokenizer on one bundle: encode, template and decode as an app calls them. A subclass sets
    name and the three callables."""

    name: str
    encode: Callable[[str], list[int]]  # text -> ids, nothing added
    template: Callable[[str], str]  # a user's message -> the chat-templated text
    decode: Callable[[list[int]], str]

    def tokenizer_problems(self, recipe: dict, manifest: dict, reference: dict, source: Any) -> list[str]:
        """Each prompt as the app sends it and each eval window's text (BOS aside) against the source tokenizer;
        one line per mismatch naming the first differing token."""
        problems = []
        for key, message in enumerate(manifest["lm"]["prompts"]):
            got = apply_recipe(recipe, message, self.encode, self.template)
            expected = [int(t) for t in reference[f"gen/{key}/prompt"]]
            if got != expected:
                problems.append(f"{self.name}'s tokenizer encodes prompt {key} differently "
                                f"{_difference(source, expected, got)}")
        for number, window in enumerate(reference["tf/tokens"]):
            text = source.decode([int(t) for t in window], skip_special_tokens=True)
            expected = [int(t) for t in source(text, add_special_tokens=False)["input_ids"]]
            got = self.encode(text)
            got = got[1:] if got[:1] == [source.bos_token_id] != expected[:1] else got
            if got != expected:
                problems.append(f"{self.name}'s tokenizer encodes eval window {number}'s text differently "
                                f"{_difference(source, expected, got)}")
            elif (decoded := self.decode(expected)) != source.decode(expected):
                problems.append(f"{self.name}'s tokenizer decodes eval window {number} to different text (from "
                                f"character {first_difference(list(source.decode(expected)), list(decoded))})")
        return problems


class BundleRuntime(BundleTokenizer, ABC):
    """A runtime's app-side library on one bundle: its tokenizer and its generation loop."""

    @abstractmethod
    def generate(self, artifact: str, prompt: list[int], message: str, new_tokens: int) -> list[int] | str:
        """The runtime's greedy continuation: token ids, or text where the library gives only text."""

    def generation_problems(self, artifact: str, manifest: dict, reference: dict, runs: list[dict], eos: set[int],
                            source: Any) -> list[str]:
        """The runtime's greedy loop on each prompt against the tokens edgeport's run of the artifact generated."""
        problems = []
        for run in runs:
            key = run["prompt"]
            expected = until_end_of_sequence(run["generated"], eos)
            got = self.generate(artifact, [int(t) for t in reference[f"gen/{key}/prompt"]],
                                manifest["lm"]["prompts"][key], len(expected))
            if isinstance(got, str):  # compared as text: the library hands the app text pieces
                wanted = source.decode([t for t in expected if t not in eos])
                if got != wanted:
                    at = first_difference(list(wanted), list(got))
                    problems.append(f"{self.name} generates different text for prompt {key} from character {at}: "
                                    f"{got[at:at + 20]!r} where edgeport's run of {artifact} wrote "
                                    f"{wanted[at:at + 20]!r}")
            elif got != expected:
                index = first_difference(expected, got)
                problems.append(f"{self.name} writes {got[index] if index < len(got) else 'end of sequence'} at new "
                                f"token {index} of prompt {key} where edgeport's run of {artifact} wrote "
                                f"{expected[index]}")
        return problems


class GenaiRuntime(BundleRuntime):
    """onnxruntime-genai: og.Model from the directory's config and the artifact's overlay, its Tokenizer and
    Generator."""

    name = "onnxruntime-genai"

    def __init__(self, directory: Path, bundle: dict) -> None:
        self.directory, self.overlays, self.models = directory, bundle["overlays"], {}
        self.encode, self.template, self.decode = genai_encoders(self.model(next(iter(self.overlays))))

    def model(self, artifact: str) -> Any:
        """The artifact's og.Model, loaded once (every prompt's Generator shares it, as an app's would)."""
        import onnxruntime_genai as og

        if artifact not in self.models:
            config = og.Config(str(self.directory))
            config.overlay((self.directory / self.overlays[artifact]).read_text())
            self.models[artifact] = og.Model(config)
        return self.models[artifact]

    def generate(self, artifact: str, prompt: list[int], message: str, new_tokens: int) -> list[int]:
        import onnxruntime_genai as og

        model = self.model(artifact)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array(prompt, np.int32))
        tokens = []
        while not generator.is_done() and len(tokens) < new_tokens:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return tokens


def genai_encoders(model: Any) -> tuple[Callable, Callable, Callable]:
    """(text -> ids, message -> chat-templated text, ids -> text) with genai's own tokenizer of an og.Model."""
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(model)
    return (lambda text: [int(t) for t in tokenizer.encode(text)],
            lambda message: tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": message}]),
                                                          add_generation_prompt=True),
            lambda ids: tokenizer.decode(np.array(ids, np.int32)))


class RunnerRuntime(BundleRuntime):
    """ExecuTorch's LLM runner: TextLLMRunner(model.pte, tokenizer.json), whose tokenizer is the pytorch-tokenizers
    library it links (loaded here from Python); the app applies the chat template (tokenizer_config.json's) itself."""

    name = "ExecuTorch's LLM runner"

    def __init__(self, directory: Path, bundle: dict, source: Any) -> None:
        self.directory, self.recipe, self.tokenizer_file = directory, bundle["prompt"], bundle["tokenizer"]
        self.encode, self.template, self.decode = runner_encoders(directory / self.tokenizer_file, source)

    def generate(self, artifact: str, prompt: list[int], message: str, new_tokens: int) -> str:
        from common.quiet import silenced
        from validators.runtimes.executorch_runtime import llm_runner

        runner, config = llm_runner()
        pieces: list[str] = []
        with silenced():  # the runner prints each piece and its stats to stdout as well
            runner(str(self.directory / artifact), str(self.directory / self.tokenizer_file)).generate(
                recipe_text(self.recipe, message, self.template),
                config(echo=False, max_new_tokens=new_tokens, temperature=0.0, num_bos=0, num_eos=0),
                token_callback=pieces.append)
        return "".join(pieces)


def runner_encoders(folder: Path, source: Any) -> tuple[Callable, Callable, Callable]:
    """(text -> ids, message -> chat-templated text, ids -> text) as ExecuTorch's runner encodes: its
    HFTokenizer loaded from the tokenizer folder (tokenizer.json, and tokenizer_config.json for BOS and EOS), no
    BOS or EOS added; the template is the source's Jinja one, as an app renders it."""
    from common.quiet import silenced

    with silenced():  # its regex registration logs to stderr
        from pytorch_tokenizers.pytorch_tokenizers_cpp import HFTokenizer

        tokenizer = HFTokenizer()
        tokenizer.load(str(folder))
    return (lambda text: [int(t) for t in tokenizer.encode(text, 0, 0)], _source_template(source),
            lambda ids: "".join(tokenizer.decode(token) for token in ids))


class LiteRtLmRuntime(BundleRuntime):
    """LiteRT-LM: an Engine per .litertlm (its tokenizer is the one inside), a Session per prompt fed the recipe's
    text, greedy (top_k 1); the app applies the chat template (the source's Jinja, also stored in the metadata)."""

    name = "LiteRT-LM"

    def __init__(self, directory: Path, bundle: dict, source: Any) -> None:
        self.directory, self.models, self.recipe, self.engines = directory, bundle["models"], bundle.get("prompt"), {}
        # the engine caches its XNNPACK weight packing beside the model unless told where: never in the artifacts
        self.scratch = tempfile.TemporaryDirectory(prefix="edgeport-litert-lm-")
        engine = self.engine(next(iter(self.models)))
        self.encode, self.decode = engine.tokenize, engine.detokenize
        self.template = _source_template(source)

    def engine(self, artifact: str) -> Any:
        """The artifact's Engine, loaded once (every prompt's Session shares it, as an app's would)."""
        import litert_lm

        if artifact not in self.engines:
            litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
            self.engines[artifact] = litert_lm.Engine(str(self.directory / self.models[artifact]),
                                                      cache_dir=self.scratch.name)
        return self.engines[artifact]

    def generate(self, artifact: str, prompt: list[int], message: str, new_tokens: int) -> str:
        import litert_lm

        session = self.engine(artifact).create_session(apply_prompt_template=False, max_output_tokens=new_tokens,
                                                       sampler_config=litert_lm.SamplerConfig(top_k=1))
        try:
            session.run_prefill([recipe_text(self.recipe, message, self.template)])
            return "".join(session.run_decode().texts)
        finally:
            session.close()


class TokenizerFile(BundleTokenizer):
    """A bundle whose runtime is not installable here (swift-transformers runs on Apple platforms only): its
    tokenizer.json read by the Hugging Face tokenizers library, the same file's other reader, special tokens added
    as an app's encode adds them; no generation loop to run."""

    name = "the Core ML app"

    def __init__(self, directory: Path, bundle: dict, source: Any) -> None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(directory / bundle["tokenizer"]))
        self.encode = lambda text: tokenizer.encode(text, add_special_tokens=True).ids
        self.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
        self.template = _source_template(source)


def _source_template(source: Any) -> Callable[[str], str]:
    """The source's Jinja chat template, rendered as an app renders it."""
    return lambda message: source.apply_chat_template([{"role": "user", "content": message}],
                                                      add_generation_prompt=True, tokenize=False)


def open_bundle(fmt: str, directory: Path, bundle: dict, source: Any) -> BundleTokenizer:
    """The bundle's runtime: a BundleRuntime where its library installs here, else its tokenizer file alone."""
    if fmt == "onnx":
        return GenaiRuntime(directory, bundle)
    return {"executorch": RunnerRuntime, "tflite": LiteRtLmRuntime, "coreml": TokenizerFile}[fmt](
        directory, bundle, source)
