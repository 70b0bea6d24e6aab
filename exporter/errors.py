"""Failures told apart: the user's mistake (exit 2, says what to fix), and a conversion that
could not be done (exit 2, names the op and the module). Internal bugs are ordinary exceptions."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import EdgeportError


class UserInputError(EdgeportError):
    """Bad input: a missing file, a wrong input spec, data that does not fit the model."""


class ConversionError(EdgeportError):
    """A converter could not turn the model into a requested format."""


@dataclass(frozen=True)
class UnsupportedOp:
    """One operator a format cannot take, with where it came from in the user's model."""

    op: str
    module_path: str  # e.g. "features.3" ("" for the top-level module's forward)
    module_type: str
    reason: str

    def describe(self) -> str:
        where = self.module_path or "<top-level forward>"
        return f"{self.op} in {where} ({self.module_type}): {self.reason}"


class UnsupportedOpsError(ConversionError):
    """Every operator each requested format cannot take, gathered before any long conversion."""

    def __init__(self, by_format: dict[str, tuple[list[UnsupportedOp], str]]):
        self.by_format = by_format
        parts = [f"{fmt} cannot take {len(ops)} operator(s): {'; '.join(op.describe() for op in ops)}. {hint}"
                 for fmt, (ops, hint) in by_format.items()]
        super().__init__(" | ".join(parts))
