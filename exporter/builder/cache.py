"""The build cache: a pair is rebuilt only when what went into it changed.

The key hashes the material the manifest records, gathered without exporting: the source model (the
shipped weights of a demo, the model file or folder, a factory's file and the weights it builds), the
calibration data when the target calibrates and the eval data, the target profile, the export flags,
edgeport's own code and version, and the installed libraries. A hit also needs the artifact directory intact
(every artifact's sha256 as its manifest says), so a hand-edited or half-deleted directory is rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from common.files import sha256_file, write_json
from exporter import __version__
from exporter.builder.buildfile import Pair

RECORD = "build.json"  # in each artifact directory the build wrote: the key, its material, the exit code
PACKAGES = ("common", "edgeport", "exporter", "targets", "validators")
_SOURCE_SUFFIXES = (".py", ".toml", ".safetensors")


def _tree_sha256(root: Path, suffixes: tuple[str, ...]) -> str:
    """Like sha256_file of a folder, over the files with these suffixes only (no bytecode caches)."""
    digest = hashlib.sha256()
    for child in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes):
        digest.update(f"{child.relative_to(root).as_posix()}|{sha256_file(child)}|".encode())
    return digest.hexdigest()


@functools.cache  # once per build, not per pair
def edgeport_code_sha256() -> str:
    """edgeport's own code, targets and demo weights: a change rebuilds, whether or not the version moved."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in PACKAGES:
        digest.update(f"{package}|{_tree_sha256(root / package, _SOURCE_SUFFIXES)}|".encode())
    return digest.hexdigest()


@functools.cache
def installed_libraries_sha256() -> str:
    """Every installed distribution and its version (any upgrade can change an artifact)."""
    found = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata['Name']})
    return hashlib.sha256(("\n".join(found) + f"\npython=={platform.python_version()}").encode()).hexdigest()


def source_fingerprint(spec: str, root: Path, weights: str | None) -> dict[str, str]:
    """What identifies the source model's bytes and code, without exporting it."""
    from exporter.demo_weights import DEMOS, weights_path

    found: dict[str, str] = {}
    if spec.startswith("demo:"):
        demo = spec.split(":", 1)[1]
        if demo in DEMOS:
            found["demo_weights"] = sha256_file(weights_path(demo))
        return found  # the demo's code is part of edgeport's
    location = spec.removeprefix("hf:")
    if (root / location).exists():
        found["model"] = sha256_file(root / location)
    elif ":" in location:
        where, _, _attr = location.rpartition(":")
        if where.endswith(".py") and (root / where).is_file():
            found["factory_file"] = sha256_file(root / where)
        found["factory_weights"] = _factory_weights_sha256(spec, root, weights)
    if weights:
        found["weights"] = sha256_file(root / weights)
    return found


def _factory_weights_sha256(spec: str, root: Path, weights: str | None) -> str:
    """A factory builds its weights in code, from files only it knows: load it and hash the state dict, as the
    manifest does (a factory without example inputs still loads; its inputs do not change the weights)."""
    import os

    from exporter.sources import call_factory, import_factory, state_dict_sha256

    where, _, attr = spec.rpartition(":")
    cwd = os.getcwd()
    os.chdir(root)  # the factory's relative paths, as the export will see them
    try:
        module, _ = call_factory(import_factory(where, attr, spec), spec)
    finally:
        os.chdir(cwd)
    return state_dict_sha256(module)


def pair_material(pair: Pair, root: Path) -> dict[str, Any]:
    from targets import load_target

    target = load_target(pair.target_spec(root))
    model = pair.model
    data = {key: sha256_file(root / value) for key, value in model.paths.items()
            if key == "eval" or (key == "calib" and target.needs_calibration)}
    return {
        "model": {"spec": model.spec, "name": model.name, **source_fingerprint(model.spec, root,
                                                                              model.paths.get("weights"))},
        "data": data,
        "target": {"name": target.name, "profile_sha256": sha256_file(Path(target.origin))},
        "export_args": model.export_args(),
        "edgeport": {"version": __version__, "code_sha256": edgeport_code_sha256()},
        "libraries_sha256": installed_libraries_sha256(),
    }


def cache_key(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def reusable(directory: Path, key: str) -> dict | None:
    """The stored build record when directory holds a finished build of this key, intact; else None."""
    try:
        record = json.loads((directory / RECORD).read_text(encoding="utf-8"))
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        json.loads((directory / "report.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if record.get("key") != key:
        return None
    for entry in manifest.get("artifacts", []):
        for file in entry.get("files") or [entry]:  # a language model's graph and its weights file
            path = directory / file["path"]
            if not path.exists() or sha256_file(path) != file.get("sha256"):
                return None
    return record


def write_record(directory: Path, key: str, material: dict, exit_code: int, seconds: float) -> None:
    write_json(directory / RECORD, {"key": key, "exit_code": exit_code, "seconds": round(seconds, 2),
                                    "material": material})
