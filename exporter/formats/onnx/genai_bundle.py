"""What onnxruntime-genai's own loader opens: `og.Model(directory)` reads genai_config.json and the tokenizer
files beside it. One artifact directory holds several ONNX variants and genai names one decoder file per config
(and refuses a path with ".."), so genai_config.json names the first ONNX artifact and each ONNX artifact gets
an overlay, `<artifact>.genai.json`, that selects it:

    config = og.Config(directory); config.overlay(open(directory / "model.w8.onnx.genai.json").read())
    model = og.Model(config)

Both cache layouts run in place: genai binds present to the past buffer (past_present_share_buffer), which
the builder's GroupQueryAttention and edgeport's ScatterElements cache write each take as their output.
Validated by validators/lm/bundle.py: genai's Generator must write the tokens edgeport's run wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG = "genai_config.json"
OVERLAY_SUFFIX = ".genai.json"


def _decoder(entry: dict, threads: int) -> dict:
    io, cache = entry["cache"]["io"], entry["cache"]
    inputs = {"input_ids": "input_ids", **({"attention_mask": "attention_mask"} if io["position"] == "attention_mask"
                                            else {"position_ids": io["position"]}),
              "past_key_names": io["past"].format(layer="%d", kv="key"),
              "past_value_names": io["past"].format(layer="%d", kv="value")}
    outputs = {"logits": "logits", "present_key_names": io["present"].format(layer="%d", kv="key"),
               "present_value_names": io["present"].format(layer="%d", kv="value")}
    return {"filename": entry["path"], "session_options": {"log_id": "onnxruntime-genai", "provider_options": [],
                                                           "intra_op_num_threads": threads},
            "head_size": cache["head_dim"], "num_hidden_layers": cache["layers"],
            "num_key_value_heads": cache["kv_heads"], "inputs": inputs, "outputs": outputs}


def genai_config(entry: dict, model_config: Any, tokenizer: Any, threads: int) -> dict:
    """genai_config.json for one ONNX artifact: greedy search over the artifact's whole cache."""
    from exporter.lm.decode_step import eos_ids, text_config

    config = text_config(model_config)
    eos = eos_ids(model_config, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    length = entry["cache"]["cache_length"]
    decoder = _decoder(entry, threads) | {
        "hidden_size": config.hidden_size, "num_attention_heads": config.num_attention_heads}
    return {"model": {"type": "decoder", "bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos,
                      "pad_token_id": pad, "context_length": length, "vocab_size": config.vocab_size,
                      "decoder": decoder},
            "search": {"max_length": length, "min_length": 0, "past_present_share_buffer": True, "do_sample": False,
                       "num_beams": 1, "num_return_sequences": 1, "top_k": 1, "top_p": 1.0, "temperature": 1.0,
                       "repetition_penalty": 1.0, "length_penalty": 1.0, "early_stopping": True,
                       "diversity_penalty": 0.0, "no_repeat_ngram_size": 0}}


def write_bundle(work: Path, entries: list[dict], model_config: Any, tokenizer_dir: Path,
                 threads: int) -> dict | None:
    """genai_config.json (the first ONNX artifact), each ONNX artifact's overlay and the tokenizer files, in
    work; the manifest's record of them ({runtime, config, overlays: {artifact: file}, files}), or None when
    there is no ONNX artifact."""
    from exporter.lm.backend import bundle_tokenizer

    onnx = [e for e in entries if e["format"] == "onnx"]
    if not onnx:
        return None
    tokenizer, copied = bundle_tokenizer(tokenizer_dir, work)
    configs = {e["path"]: genai_config(e, model_config, tokenizer, threads) for e in onnx}
    (work / CONFIG).write_text(json.dumps(configs[onnx[0]["path"]], indent=1) + "\n")
    overlays = {}
    for path, config in configs.items():
        overlays[path] = path + OVERLAY_SUFFIX
        (work / overlays[path]).write_text(json.dumps({"model": {"decoder": config["model"]["decoder"]}}, indent=1)
                                           + "\n")
    return {"runtime": "onnxruntime-genai", "config": CONFIG, "overlays": overlays, "prompt": _recipe(work, tokenizer),
            "eos_token_ids": configs[onnx[0]["path"]]["model"]["eos_token_id"],
            "opens": (f"og.Model(directory) opens {onnx[0]['path']}; og.Config(directory).overlay(the text of "
                      f"<artifact>{OVERLAY_SUFFIX}) picks another"),
            "files": [CONFIG, *overlays.values(), *copied]}


def _recipe(work: Path, tokenizer: Any) -> dict:
    import onnxruntime_genai as og

    from validators.lm.bundle import genai_encoders
    from validators.lm.prompt_recipe import prompt_recipe

    encode, template, _ = genai_encoders(og.Model(str(work)))
    return prompt_recipe(tokenizer, encode, template, "tokenizer.encode (og.Tokenizer)")
