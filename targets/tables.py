"""Reading a target file's tables: unknown keys and non-numbers are refused with the valid choices named."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from common.errors import TargetError


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def check_keys(table: dict[str, Any], allowed: list[str], where: str, origin: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise TargetError(
            f"{origin}: unknown key(s) {', '.join(unknown)} in {where}; valid keys: {', '.join(allowed)}"
        )


def number(value: Any, key: str, where: str, origin: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TargetError(f"{origin}: {where}.{key} must be a finite number, got {value!r}")
    if value < 0:
        raise TargetError(f"{origin}: {where}.{key} must not be negative, got {value!r}")
    return float(value)


def numbers(table: dict[str, Any], settings: type, where: str, origin: str, skip: tuple[str, ...] = ()) -> dict:
    """The table's values of a settings dataclass's numeric fields, whole numbers where the field is an int."""
    values: dict[str, Any] = {}
    for f in fields(settings):
        if f.name in table and f.name not in skip:
            value = number(table[f.name], f.name, where, origin)
            if f.type == "int" and value != int(value):
                raise TargetError(f"{origin}: {where}.{f.name} must be a whole number, got {value!r}")
            values[f.name] = int(value) if f.type == "int" else value
    return values
