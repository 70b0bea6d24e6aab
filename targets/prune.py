"""[prune] in a target: structured pruning before lowering (exporter/prune.py), read by the same rules for every
model kind; what differs between kinds (the units it can remove, the limits it reads, its defaults and the budget
of what pruning may cost) is a PruneRules row each kind's target class carries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.errors import TargetError
from targets.catalog import Budget
from targets.tables import check_keys, field_names, number, numbers

LIMITS = ("max_macs_ratio", "max_params_ratio", "max_latency_ms")


@dataclass(frozen=True)
class PruneSettings:
    """Structured pruning before lowering (exporter/prune.py): channels (or whole layers) removed a step at a time
    until every limit set here holds, then recovered by distillation from the unpruned model (no labels). Each
    artifact is judged by its own budget against the pruned model and by `budget` against the unpruned one."""

    max_macs_ratio: float | None = None    # the pruned model's multiply-accumulates / the source's
    max_params_ratio: float | None = None  # its parameters / the source's (a tied embedding and head counted once)
    max_latency_ms: float | None = None    # the target's first variant, lowered and timed with its own runtime
    step: float = 0.1                      # share of every prunable layer's units each step removes
    units: str = "channels"                # and attention heads; or "layers": whole blocks of the model's stack
    max_pruned: float = 0.9                # the most of a layer's units (or of the layers) pruning may remove
    # a pruned layer keeps a multiple of this many units: demo:digits at half its MACs with widths 11/22/22/44 ran
    # 1.3x slower in ONNX Runtime fp32 than unpruned, with 8/20/20/44 1.09x faster (1 thread)
    round_to: int = 4
    recovery_steps: int = 1000             # distillation steps (Adam) on the calibration data after pruning
    max_recovery_seconds: float = 600.0    # distillation stops here if its steps take longer
    learning_rate: float = 1e-3
    batch: int = 32                        # calibration samples (a language model's: text windows) per step
    # what pruning may cost, judged on every artifact against the unpruned model ([prune.budget], over the kind's
    # defaults: PruneRules); each variant's own budget judges its conversion against the pruned model
    budget: Any = Budget(max_accuracy_drop=0.005, min_top1_agreement=0.95)

    def limits(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in LIMITS if getattr(self, k) is not None}


def said_limits(settings: dict[str, Any]) -> str:
    """The limits among a [prune] table's settings (PruneSettings' or the manifest's), as progress and reports say
    them: "max_params_ratio 0.8"."""
    return ", ".join(f"{k} {settings[k]:g}" for k in LIMITS if settings.get(k) is not None)


@dataclass(frozen=True)
class PruneRules:
    """What one model kind's [prune] reads: its defaults (the budget's included), the units it can remove, the
    budget limits that judge what pruning cost, and the limits it does not read with why."""

    defaults: PruneSettings
    units: tuple[str, ...]
    budget_keys: tuple[str, ...]
    unread: dict[str, str] = field(default_factory=dict)  # key -> why this kind does not read it


TENSOR_RULES = PruneRules(PruneSettings(), ("channels", "layers"),
                          ("max_accuracy_drop", "min_top1_agreement", "min_cosine", "min_sqnr_db"))


def read_prune(table: Any, origin: str, rules: PruneRules) -> PruneSettings | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise TargetError(f"{origin}: [prune] must be a table, e.g. [prune] max_params_ratio = 0.8")
    check_keys(table, field_names(PruneSettings), "[prune]", origin)
    for key, why in rules.unread.items():
        if key in table and table[key] != getattr(rules.defaults, key):
            raise TargetError(f"{origin}: prune.{key} is not read for this target: {why}")
    defaults = rules.defaults
    values: dict[str, Any] = {}
    if "budget" in table:
        given = table["budget"]
        if not isinstance(given, dict):
            raise TargetError(f"{origin}: [prune.budget] must be a table of limits, e.g. "
                              f"{{ {rules.budget_keys[0]} = ... }}")
        check_keys(given, list(rules.budget_keys), "[prune.budget]", origin)
        values["budget"] = defaults.budget.merged({k: number(v, k, "[prune.budget]", origin) for k, v in given.items()})
    units = table.get("units", defaults.units)
    if units not in rules.units:
        raise TargetError(f"{origin}: prune.units {units!r}; choose one of: {', '.join(rules.units)}")
    values["units"] = units
    values |= numbers(table, PruneSettings, "prune", origin, skip=("budget", "units"))
    settings = dataclasses.replace(defaults, **values)
    if not settings.limits():
        wanted = [key for key in LIMITS if key not in rules.unread]
        raise TargetError(f"{origin}: [prune] needs a limit to prune towards: {' or '.join(wanted)}")
    for key in ("max_macs_ratio", "max_params_ratio"):
        if (value := getattr(settings, key)) is not None and not 0 < value < 1:
            raise TargetError(f"{origin}: prune.{key} is a share of the source's, between 0 and 1; got {value!r}")
    if not 0 < settings.step <= settings.max_pruned < 1:
        raise TargetError(f"{origin}: [prune] needs 0 < step <= max_pruned < 1 (shares of a layer's units); got "
                          f"step {settings.step!r}, max_pruned {settings.max_pruned!r}")
    if settings.batch < 1 or settings.round_to < 1:
        raise TargetError(f"{origin}: prune.batch and prune.round_to must be at least 1")
    return settings


def prune_profile(settings: PruneSettings | None) -> dict[str, Any] | None:
    """The settings as a target's profile stores them: what read_prune reads back to the same settings."""
    if settings is None:
        return None
    return {k: v for k, v in dataclasses.asdict(settings).items() if v is not None and k != "budget"} | \
        {"budget": settings.budget.limits()}


def pruned_with(target: Any, pairs: list[str]) -> PruneSettings:
    """The target's [prune] table with the command line's --prune KEY=VALUE pairs over it (budget.KEY for
    [prune.budget])."""
    rules = getattr(target, "prune_rules", None)
    if rules is None:
        raise TargetError(f"--prune: {target.name} is a {target.kind} target, which does not prune; prune image, "
                          "audio, text or language models")
    table = dict(prune_profile(target.prune) or {})
    for pair in pairs:
        key, sep, text = (part.strip() for part in pair.partition("="))
        if not sep or not text:
            raise TargetError(f"--prune {pair!r}: write KEY=VALUE, e.g. --prune max_params_ratio=0.8")
        try:
            value: Any = float(text)
        except ValueError:
            value = text  # a word setting (units); a number's key says so when it gets one
        inner, dot, budget_key = key.partition(".")
        if dot and inner == "budget":
            table["budget"] = table.get("budget", {}) | {budget_key: value}
        else:
            table[key] = value
    return read_prune(table, "--prune", rules)
