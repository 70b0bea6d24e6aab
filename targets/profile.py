"""Target profiles: a TOML file read into a frozen, validated `Target`.

Adding a target is writing one file (see targets/android.toml); nothing here knows about a
particular device. Every key is checked: an unknown one is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from common.errors import TargetError
from devices import device_list
from targets.catalog import OPTION_CHOICES, PASSES, PRECISIONS, Budget, Precision, artifact_filename
from targets.lm import lm_target_from_dict
from targets.prune import TENSOR_RULES, PruneRules, PruneSettings, prune_profile, read_prune
from targets.tables import check_keys, field_names, number, numbers

TARGETS_DIR = Path(__file__).resolve().parent


def implied_cosine(min_sqnr_db: float) -> float:
    """The lowest cosine an output meeting min_sqnr_db can have: an error of relative norm r turns
    the output by at most asin(r), so cosine >= sqrt(1 - r^2) with r^2 = 10^(-SQNR/10). Rounded down
    to 6 decimals, so an output exactly at the SQNR bound never fails the cosine one."""
    return math.floor(math.sqrt(max(0.0, 1.0 - 10.0 ** (-min_sqnr_db / 10.0))) * 1e6) / 1e6


DIAGNOSE_MODES = ("always", "on-failure", "off")
DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18")


@dataclass(frozen=True)
class CoremlSettings:
    minimum_deployment_target: str = "iOS17"  # iOS18 switches weight compression to its newer ops


@dataclass(frozen=True)
class Variant:
    """One artifact to emit: a format at a precision, with the budget it must meet."""

    format: str
    precision: str
    budget: Budget
    options: Any = None  # the precision row's typed options (catalog), defaults when None

    def __post_init__(self) -> None:
        if self.options is None:
            object.__setattr__(self, "options", self.row.options())

    @property
    def row(self) -> Precision:
        return PRECISIONS[self.format][self.precision]

    @property
    def filename(self) -> str:
        return artifact_filename(self.format, self.precision)

    @property
    def needs_calibration(self) -> bool:
        return self.row.needs_calibration


@dataclass(frozen=True)
class RuntimeSettings:
    """How latency is measured on the host for this target."""

    threads: int = 1
    warmup_runs: int = 10
    min_runs: int = 100  # p99 needs at least this many
    min_seconds: float = 0.5
    max_runs: int = 5000
    tflite_delegates: tuple[str, ...] = ("xnnpack",)  # latency per entry; the first also gives parity


TFLITE_DELEGATES = ("xnnpack", "none")


@dataclass(frozen=True)
class NpuSettings:
    """Compile full-integer int8 TFLite variants for an Arm Ethos-U NPU with vela."""

    accelerator: str = "ethos-u55-128"
    system_config: str = "Ethos_U55_High_End_Embedded"
    memory_mode: str = "Shared_Sram"


@dataclass(frozen=True)
class Target:
    kind: ClassVar[str] = "tensor"  # the model-kind plug-in that exports it (exporter/kinds/)
    name: str
    description: str
    variants: tuple[Variant, ...]
    passes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pass_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # format -> pass id -> its config
    runtime: RuntimeSettings = RuntimeSettings()
    npu: NpuSettings | None = None
    coreml: CoremlSettings = CoremlSettings()
    auto_precision: bool = False  # keep the most harmful layers in float until a quantized variant passes
    diagnose: str = "always"  # per-layer blame: "always", "on-failure" (only a variant missing its budget), "off"
    devices: tuple[str, ...] = ()  # device profiles (devices/) the report estimates latency for
    prune: PruneSettings | None = None  # [prune]: structured pruning before lowering
    prune_rules: ClassVar[PruneRules] = TENSOR_RULES
    origin: str = ""  # the file it was read from

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.format for v in self.variants))

    def variants_of(self, fmt: str) -> list[Variant]:
        return [v for v in self.variants if v.format == fmt]

    @property
    def needs_calibration(self) -> bool:
        return any(v.needs_calibration for v in self.variants)

    def to_profile(self) -> dict[str, Any]:
        """The target as resolved (command-line overrides, default budgets and options included), in the
        shape target_from_dict reads: what the manifest stores, so validation judges by the export's terms."""
        profile: dict[str, Any] = {
            "name": self.name, "description": self.description, "auto_precision": self.auto_precision,
            "diagnose": self.diagnose, "devices": list(self.devices),
            "runtime": {**dataclasses.asdict(self.runtime), "tflite_delegates": list(self.runtime.tflite_delegates)},
            "coreml": dataclasses.asdict(self.coreml),
            "passes": {fmt: list(ids) for fmt, ids in self.passes.items()},
            "variants": [{"format": v.format, "precision": v.precision, **dataclasses.asdict(v.options),
                          "budget": v.budget.limits()} for v in self.variants],
        }
        if self.pass_configs:
            profile["pass_options"] = {fmt: {pass_id: _plain(dataclasses.asdict(config))
                                             for pass_id, config in by_pass.items()}
                                       for fmt, by_pass in self.pass_configs.items()}
        if self.npu is not None:
            profile["npu"] = dataclasses.asdict(self.npu)
        if self.prune is not None:
            profile["prune"] = prune_profile(self.prune)
        return profile


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _budget_overrides(table: Any, where: str, origin: str) -> dict[str, float]:
    if not isinstance(table, dict):
        raise TargetError(f"{origin}: {where} must be a table of limits, got {table!r}")
    check_keys(table, field_names(Budget), where, origin)
    return {k: number(v, k, where, origin) for k, v in table.items()}


def _runtime(table: Any, origin: str) -> RuntimeSettings:
    if not isinstance(table, dict):
        raise TargetError(f"{origin}: [runtime] must be a table")
    check_keys(table, field_names(RuntimeSettings), "[runtime]", origin)
    values: dict[str, Any] = {}
    delegates = table.get("tflite_delegates", ["xnnpack"])
    if not isinstance(delegates, list) or not delegates or any(d not in TFLITE_DELEGATES for d in delegates):
        raise TargetError(f"{origin}: runtime.tflite_delegates must be a list drawn from {', '.join(TFLITE_DELEGATES)}")
    values["tflite_delegates"] = tuple(delegates)
    values |= numbers(table, RuntimeSettings, "runtime", origin, skip=("tflite_delegates",))
    settings = RuntimeSettings(**values)
    if settings.threads < 1 or settings.min_runs < 1 or settings.max_runs < settings.min_runs:
        raise TargetError(f"{origin}: [runtime] needs threads >= 1 and 1 <= min_runs <= max_runs")
    return settings


def _npu(table: Any, origin: str) -> NpuSettings | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise TargetError(f"{origin}: [npu] must be a table")
    check_keys(table, field_names(NpuSettings), "[npu]", origin)
    accelerators = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
                    "ethos-u65-512", "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024",
                    "ethos-u85-2048")
    settings = NpuSettings(**{k: str(v) for k, v in table.items()})
    if settings.accelerator not in accelerators:
        raise TargetError(f"{origin}: npu.accelerator {settings.accelerator!r}; "
                          f"choose one of: {', '.join(accelerators)}")
    return settings


def _coreml(table: Any, origin: str) -> CoremlSettings:
    if not isinstance(table, dict):
        raise TargetError(f"{origin}: [coreml] must be a table")
    check_keys(table, field_names(CoremlSettings), "[coreml]", origin)
    settings = CoremlSettings(**{k: str(v) for k, v in table.items()})
    if settings.minimum_deployment_target not in DEPLOYMENT_TARGETS:
        raise TargetError(f"{origin}: coreml.minimum_deployment_target {settings.minimum_deployment_target!r}; "
                          f"choose one of: {', '.join(DEPLOYMENT_TARGETS)}")
    return settings


def _options(table: dict[str, Any], row: Precision, where: str, origin: str) -> Any:
    """The variant's typed options: a key its precision does not read is an error, not silently ignored."""
    given = {k: v for k, v in table.items() if k in OPTION_CHOICES}
    unread = sorted(set(given) - set(row.option_names))
    if unread:
        reads = f"it reads only: {', '.join(row.option_names)}" if row.option_names else "it reads no options"
        raise TargetError(f"{origin}: {where}.{unread[0]} is not used by {row.format}/{row.id} ({reads}); remove it")
    values: dict[str, Any] = {}
    for key, value in given.items():
        choices = OPTION_CHOICES[key]
        if choices is None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TargetError(f"{origin}: {where}.{key} must be a whole number >= 1, got {value!r}")
        elif value not in choices:
            raise TargetError(f"{origin}: {where}.{key} {value!r}; choose one of: {', '.join(choices)}")
        values[key] = value
    return row.options(**values)


def _variant(table: Any, index: int, common: dict[str, float], origin: str) -> Variant:
    where = f"variants[{index}]"
    if not isinstance(table, dict):
        raise TargetError(f"{origin}: {where} must be a table with format and precision")
    check_keys(table, ["format", "precision", "budget", *OPTION_CHOICES], where, origin)
    fmt, precision_id = table.get("format"), table.get("precision")
    if fmt not in PRECISIONS:
        raise TargetError(f"{origin}: {where}.format {fmt!r} is not one of: {', '.join(PRECISIONS)}")
    if precision_id not in PRECISIONS[fmt]:
        raise TargetError(
            f"{origin}: {where}.precision {precision_id!r} is not available for {fmt}; "
            f"choose one of: {', '.join(PRECISIONS[fmt])}"
        )
    row = PRECISIONS[fmt][precision_id]
    overrides = common | _budget_overrides(table.get("budget", {}), f"{where}.budget", origin)
    budget = row.budget.merged(overrides)
    if "min_cosine" not in overrides and budget.min_sqnr_db is not None:
        budget = budget.merged({"min_cosine": implied_cosine(budget.min_sqnr_db)})
    return Variant(fmt, precision_id, budget, _options(table, row, where, origin))


def _passes(data: Any, options: Any, origin: str) -> tuple[dict[str, tuple[str, ...]], dict[str, dict[str, Any]]]:
    """[passes] lists pass ids per format; [pass_options.<format>.<pass id>] sets a pass's typed config."""
    if not isinstance(data, dict):
        raise TargetError(f"{origin}: [passes] must map a format to a list of pass ids")
    check_keys(data, list(PASSES), "[passes]", origin)
    passes: dict[str, tuple[str, ...]] = {}
    for fmt, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise TargetError(f"{origin}: passes.{fmt} must be a list of pass ids")
        unknown = [i for i in ids if i not in PASSES[fmt]]
        if unknown:
            raise TargetError(
                f"{origin}: unknown {fmt} pass(es) {', '.join(unknown)}; valid: {', '.join(PASSES[fmt])}"
            )
        passes[fmt] = tuple(ids)
    if not isinstance(options, dict):
        raise TargetError(f"{origin}: [pass_options] must be tables [pass_options.<format>.<pass id>]")
    configs: dict[str, dict[str, Any]] = {}
    for fmt, by_pass in options.items():
        if fmt not in passes or not isinstance(by_pass, dict):
            raise TargetError(f"{origin}: pass_options.{fmt}: list the format's passes in [passes] first")
        check_keys(by_pass, list(passes[fmt]), f"pass_options.{fmt} (the passes this target runs)", origin)
        for pass_id, values in by_pass.items():
            config = PASSES[fmt][pass_id].config
            where = f"pass_options.{fmt}.{pass_id}"
            if not isinstance(values, dict):
                raise TargetError(f"{origin}: {where} must be a table of settings")
            check_keys(values, field_names(config), where, origin)
            configs.setdefault(fmt, {})[pass_id] = config(**{k: _setting(v, config, k, where, origin)
                                                             for k, v in values.items()})
    return passes, configs


def _setting(value: Any, config: type, key: str, where: str, origin: str) -> Any:
    """A pass setting of its declared type (bool, int, or a tuple of strings)."""
    default = getattr(config(), key)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    else:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        raise TargetError(f"{origin}: {where}.{key} must be like {default!r}, got {value!r}")
    return value


def target_from_dict(data: dict[str, Any], origin: str) -> Target:
    """Validate a parsed target file. Every problem names the key and the valid choices."""
    check_keys(data, ["name", "description", "runtime", "passes", "budgets", "variants", "npu", "coreml",
                       "auto_precision", "diagnose", "pass_options", "devices", "prune"], "the top level", origin)
    auto_precision = data.get("auto_precision", False)
    if not isinstance(auto_precision, bool):
        raise TargetError(f"{origin}: auto_precision must be true or false")
    diagnose = data.get("diagnose", "always")
    if diagnose not in DIAGNOSE_MODES:
        raise TargetError(f"{origin}: diagnose {diagnose!r}; choose one of: {', '.join(DIAGNOSE_MODES)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise TargetError(f"{origin}: the target needs a name, e.g. name = \"my-phone\"")
    variants_table = data.get("variants")
    if not isinstance(variants_table, list) or not variants_table:
        raise TargetError(f"{origin}: the target needs at least one [[variants]] table with format and precision")
    common = _budget_overrides(data.get("budgets", {}), "[budgets]", origin)
    variants = tuple(_variant(t, i, common, origin) for i, t in enumerate(variants_table))
    seen: set[tuple[str, str]] = set()
    for v in variants:
        if (v.format, v.precision) in seen:
            raise TargetError(f"{origin}: variant {v.format}/{v.precision} is listed twice")
        seen.add((v.format, v.precision))

    npu = _npu(data.get("npu"), origin)
    if npu is not None and not any((v.format, v.precision) == ("tflite", "int8_full") for v in variants):
        raise TargetError(f"{origin}: [npu] compiles full-integer int8 TFLite; add a variant with "
                          'format = "tflite" and precision = "int8_full"')
    passes, pass_configs = _passes(data.get("passes", {}), data.get("pass_options", {}), origin)
    return Target(
        name=name,
        description=str(data.get("description", "")),
        variants=variants,
        passes=passes,
        pass_configs=pass_configs,
        runtime=_runtime(data.get("runtime", {}), origin),
        npu=npu,
        coreml=_coreml(data.get("coreml", {}), origin),
        auto_precision=auto_precision,
        diagnose=diagnose,
        devices=device_list(data.get("devices", []), origin),
        prune=read_prune(data.get("prune"), origin, TENSOR_RULES),
        origin=origin,
    )


def builtin_target_names() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


def resolve_target_file(name_or_path: str) -> Path:
    """A built-in target name (android) or the path of a user's own .toml file."""
    candidate = Path(name_or_path)
    if name_or_path.endswith(".toml") or candidate.parent != Path("."):
        if not candidate.is_file():
            raise TargetError(f"target file {name_or_path} does not exist; pass a .toml path or one of: "
                              f"{', '.join(builtin_target_names())}")
        return candidate
    builtin = TARGETS_DIR / f"{name_or_path}.toml"
    if not builtin.is_file():
        raise TargetError(f"unknown target {name_or_path!r}; valid targets: {', '.join(builtin_target_names())} "
                          "(or a path to your own .toml file)")
    return builtin


def read_target_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: not valid TOML ({exc}); fix the file or start from targets/android.toml") from None


# model kind -> its target reader (data, origin) -> target; a kind from outside adds its own (register_target_kind)
TARGET_READERS: dict[str, Callable[[dict, str], Any]] = {"tensor": target_from_dict, "causal-lm": lm_target_from_dict}


def register_target_kind(kind: str, reader: Callable[[dict, str], Any]) -> None:
    TARGET_READERS[kind] = reader


def load_target(name_or_path: str) -> Any:
    """The target of the file's model kind: its `kind` key, else causal-lm where it has an [lm] table, else
    tensor."""
    path = resolve_target_file(name_or_path)
    data = dict(read_target_file(path))
    kind = data.pop("kind", "causal-lm" if "lm" in data else "tensor")
    if kind not in TARGET_READERS:
        raise TargetError(f"{path}: kind {kind!r} is not a model kind this edgeport knows; choose one of: "
                          f"{', '.join(TARGET_READERS)}")
    return TARGET_READERS[kind](data, str(path))
