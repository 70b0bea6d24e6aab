"""The build file (edgeport.toml): the models a repository ships and the targets each goes to.

    out = "artifacts"                      # optional; OUT/<name>/<target>/ per pair, relative to this file
    [[models]]
    model = "demo:digits"                  # any --model SPEC; paths are relative to this file
    name = "digits"                        # optional: the artifact directory's name
    calib = "data/digits-calib.npz"        # optional, as --calib / --eval / --weights
    eval = "data/digits-eval.npz"
    targets = ["android", "iot-npu", "ios"]

Other keys of a model are the export's flags without dashes (exporter/options.py declares which: paths such as
weights, true/false flags such as dynamic_batch and auto_precision, lists such as input and output_kind). Every
mistake is one line naming the file, the entry and the fix (exit 2).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import UserInputError
from exporter.options import FLAG, LIST, PATH, build_keys

DEFAULT_FILE = "edgeport.toml"
TOP_KEYS = ("out", "models")
PATH_KEYS, FLAG_KEYS, LIST_KEYS = build_keys(PATH), build_keys(FLAG), build_keys(LIST)
MODEL_KEYS = ("model", "name", "targets", *PATH_KEYS, *FLAG_KEYS, *LIST_KEYS)


@dataclass(frozen=True)
class ModelEntry:
    spec: str  # as written, relative paths resolved against the build file's folder by the export's cwd
    name: str
    targets: tuple[str, ...]
    paths: dict[str, str] = field(default_factory=dict)  # calib / eval / weights, as written
    flags: dict[str, bool] = field(default_factory=dict)
    lists: dict[str, tuple[str, ...]] = field(default_factory=dict)  # input / output_kind

    def export_args(self) -> list[str]:
        """The `edgeport export` arguments of this model (without --target and --out)."""
        args = ["--model", self.spec, "--name", self.name]
        for key, value in self.paths.items():
            args += [f"--{key}", value]
        for key, value in self.flags.items():
            if key == "auto_precision":
                args.append("--auto-precision" if value else "--no-auto-precision")
            elif value:
                args.append("--" + key.replace("_", "-"))
        for key, values in self.lists.items():
            for value in values:
                args += ["--" + key.replace("_", "-"), value]
        return args


@dataclass(frozen=True)
class Pair:
    model: ModelEntry
    target: str

    @property
    def label(self) -> str:
        return f"{self.model.name} -> {self.target}"

    def target_spec(self, root: Path) -> str:
        return target_spec(self.target, root)


def target_spec(target: str, root: Path) -> str:
    """A built-in target's name, or the path of a profile of one's own (written relative to the build file)."""
    return str(root / target) if target.endswith(".toml") else target


@dataclass(frozen=True)
class BuildFile:
    path: Path
    out: Path  # absolute
    models: tuple[ModelEntry, ...]

    @property
    def root(self) -> Path:
        return self.path.parent

    def pairs(self, targets: list[str] | None = None, names: list[str] | None = None) -> list[Pair]:
        for wanted, known, what in ((targets, {t for m in self.models for t in m.targets}, "target"),
                                    (names, {m.name for m in self.models}, "model")):
            unknown = sorted(set(wanted or ()) - known)
            if unknown:
                raise UserInputError(f"{self.path}: no {what} {', '.join(unknown)} in the build file; it has "
                                     f"{', '.join(sorted(known))}")
        return [Pair(m, t) for m in self.models for t in m.targets
                if (not targets or t in targets) and (not names or m.name in names)]

    def matrix(self) -> dict[str, list[str]]:
        """The CI matrix: one job per target (GitHub Actions' strategy.matrix)."""
        return {"target": list(dict.fromkeys(t for m in self.models for t in m.targets))}


def default_name(spec: str) -> str:
    """The artifact directory name `edgeport export` gives the model when not told."""
    if spec.startswith("demo:"):
        return spec.split(":", 1)[1]
    location = spec.removeprefix("hf:")
    if ":" in location and not Path(location).exists():  # file.py:factory or package.module:factory
        where, _, attr = location.rpartition(":")
        stem = Path(where).stem if where.endswith(".py") else where.rsplit(".", 1)[-1]
        return f"{stem}-{attr}"
    return Path(location.rstrip("/")).stem


def _fail(path: Path, message: str) -> UserInputError:
    return UserInputError(f"{path}: {message}")


def _model_entry(raw: Any, index: int, path: Path) -> ModelEntry:
    from common.errors import TargetError
    from targets import load_target

    where = f"models[{index}]"
    if not isinstance(raw, dict):
        raise _fail(path, f"{where} must be a table ([[models]]), got {raw!r}")
    unknown = sorted(set(raw) - set(MODEL_KEYS))
    if unknown:
        raise _fail(path, f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(MODEL_KEYS)}")
    spec = raw.get("model")
    if not isinstance(spec, str) or not spec:
        raise _fail(path, f"{where} has no model: add model = \"demo:digits\" (or a file, folder or factory SPEC)")
    where = f"models[{index}] ({spec})"
    location = spec.removeprefix("hf:").rpartition(":")[0] if ":" in spec.removeprefix("hf:") \
        and not spec.startswith("demo:") else spec.removeprefix("hf:")
    looks_like_path = not spec.startswith("demo:") and ("/" in location or location.endswith(
        (".py", ".pt2", ".pt", ".pth", ".ts", ".torchscript", ".ptl", ".gguf")))
    if looks_like_path and not (path.parent / location).exists():
        raise _fail(path, f"{where}: model file {location} does not exist (paths are relative to the build file)")
    targets = raw.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise _fail(path, f"{where}: targets must be a non-empty list of target names, e.g. targets = [\"android\"]")
    for target in targets:
        try:
            load_target(target_spec(target, path.parent))
        except TargetError as exc:
            raise _fail(path, f"{where}: {exc}") from None
    paths = {}
    for key in PATH_KEYS:
        if key in raw:
            if not isinstance(raw[key], str) or not (path.parent / raw[key]).exists():
                raise _fail(path, f"{where}: {key} file {raw[key]} does not exist (relative to the build file)")
            paths[key] = raw[key]
    flags = {}
    for key in FLAG_KEYS:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise _fail(path, f"{where}: {key} must be true or false, got {raw[key]!r}")
            flags[key] = raw[key]
    lists = {}
    for key in LIST_KEYS:
        if key in raw:
            values = raw[key] if isinstance(raw[key], list) else [raw[key]]
            if not all(isinstance(v, str) for v in values):
                raise _fail(path, f"{where}: {key} must be a string or a list of strings")
            lists[key] = tuple(values)
    name = raw.get("name", default_name(spec))
    if not isinstance(name, str) or not name or "/" in name:
        raise _fail(path, f"{where}: name must be a non-empty string without '/', got {name!r}")
    return ModelEntry(spec, name, tuple(targets), paths, flags, lists)


def load_build_file(path: Path, out: Path | None = None) -> BuildFile:
    if not path.is_file():
        raise UserInputError(f"build file {path} does not exist; write one (see examples/edgeport.toml) or pass "
                             f"--file PATH")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"not valid TOML ({exc}); fix the syntax") from None
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(unknown)}; valid top-level keys: {', '.join(TOP_KEYS)}")
    models = raw.get("models")
    if not isinstance(models, list) or not models:
        raise _fail(path, "no models: add a [[models]] table with model = ... and targets = [...]")
    entries = tuple(_model_entry(m, i, path) for i, m in enumerate(models))
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        for target in entry.targets:
            if (entry.name, target) in seen:
                raise _fail(path, f"duplicate pair {entry.name} -> {target}: each model goes to a target once; "
                                  "give the second entry its own name if it is a different model")
            seen.add((entry.name, target))
    if out is None:
        written = raw.get("out", "artifacts")
        if not isinstance(written, str) or not written:
            raise _fail(path, f"out must be a folder path, got {written!r}")
        out = path.parent / written
    return BuildFile(path.resolve(), out.resolve(), entries)
