"""The embedded demos' trained weights (and demo:tinylm's tokenizer), shipped in the repository (exporter/weights/).

Training runs through CPU-specific kernels, so two machines of the same kind train different weights from the
same seed (demo:digits hashed 5e701edc... on one machine and 2916fe3e... on another). Loading the shipped
file makes the demos, their README figures, artifacts and build-cache keys the same everywhere. The training
code stays beside each demo: `python -m exporter.demo` and `python -m exporter.lm.tinylm` retrain on this
machine and rewrite the files (tests/test_demo_weights.py checks a retrain reproduces them closely).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS = Path(__file__).parent / "weights"
DEMOS = {"digits": "exporter.demo", "tinylm": "exporter.lm.tinylm"}  # demo:NAME -> the module that trains it
# demo:tinylm's float32 file was 7.1 MB, over the repository's 5 MB per file: it is stored in float16 and widened on
# load, so the shipped model (and its sha) is the float16-rounded one on every machine
STORED_HALF = {"tinylm"}


def weights_path(demo: str) -> Path:
    return WEIGHTS / f"{demo}.safetensors"


def tokenizer_path(demo: str) -> Path:
    """A demo language model's tokenizer, learned with its weights and shipped beside them."""
    return WEIGHTS / f"{demo}.tokenizer.json"


def load_into(module: Any, demo: str) -> Any:
    """module (freshly built, any weights) with the shipped weights, in eval mode."""
    from safetensors.torch import load_model

    path = weights_path(demo)
    if not path.is_file():
        from exporter.errors import UserInputError

        raise UserInputError(f"{path} is missing: this checkout lacks demo:{demo}'s weights; restore it from git or "
                             f"retrain it with `python -m {DEMOS[demo]}`")
    if demo in STORED_HALF:
        module.half()
    load_model(module, str(path), strict=True)  # handles tied tensors (the LM's embedding and head)
    return module.float().eval()


def write(module: Any, demo: str) -> Path:
    """Save a freshly trained demo as its shipped weights (the demo modules' `python -m` entry points)."""
    import copy

    from safetensors.torch import save_model

    if demo in STORED_HALF:
        module = copy.deepcopy(module).half()
    WEIGHTS.mkdir(exist_ok=True)
    path = weights_path(demo)
    save_model(module, str(path), metadata={"demo": demo})
    path.chmod(0o644)  # safetensors writes owner-only files; this one is committed
    return path
