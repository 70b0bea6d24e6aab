"""Tensor specs: the names, shapes and dtypes of a model's inputs and outputs.

`--input NAME:1x3x224x224:float32` parses into a TensorSpec. In manifests a dynamic dimension is
written as the string "batch".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporter.errors import UserInputError

DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8", "bool")
BATCH = "batch"

_INPUT_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.]*):(?P<shape>\d+(?:x\d+)*)(?::(?P<dtype>\w+))?$")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # an int, or "batch" for a dynamic leading dimension
    dtype: str
    kind: str | None = None  # outputs only: what parity judges it as (validators.parity.JUDGED_BY)
    kind_basis: str | None = None  # "declared", or why it was inferred

    def to_json(self) -> dict:
        kind = {"kind": self.kind, "kind_basis": self.kind_basis} if self.kind else {}
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, **kind}

    @property
    def sample_shape(self) -> tuple[int | str, ...]:
        return self.shape[1:]


def parse_output_kind(text: str) -> tuple[str, str]:
    """`--output-kind NAME:KIND` -> (name, kind)."""
    from validators.parity import OUTPUT_KINDS

    name, _, kind = text.strip().partition(":")
    if not name or kind not in OUTPUT_KINDS:
        raise UserInputError(f"--output-kind {text!r} is not NAME:KIND with KIND one of {', '.join(OUTPUT_KINDS)}; "
                             "write it like output:embedding")
    return name, kind


def parse_input_spec(text: str) -> TensorSpec:
    match = _INPUT_RE.match(text.strip())
    if not match:
        raise UserInputError(
            f"--input {text!r} is not NAME:DIMS[:DTYPE]; write it like image:1x3x224x224:float32"
        )
    dtype = match["dtype"] or "float32"
    if dtype not in DTYPES:
        raise UserInputError(f"--input {text!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    shape = tuple(int(d) for d in match["shape"].split("x"))
    if any(d == 0 for d in shape):
        raise UserInputError(f"--input {text!r}: every dimension must be at least 1")
    return TensorSpec(match["name"], shape, dtype)
