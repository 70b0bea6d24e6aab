"""Device profiles as data (one TOML per device, like targets) and their calibration on published measurements.

A language model's decode step reads its weights once per token, so its speed is bytes / effective bandwidth;
its prefill is compute: 2 x matmul parameters per token / effective throughput. Both effective figures are fitted
on the "fit" points of devices/calibration.toml (a device's median); "held-out" points never enter the fit and
measure the estimate's error. A device with no point of its own takes the prior (the median fraction of peak
bandwidth over every fitted device) and says so. No torch here: `edgeport estimate` answers at once.
"""

from __future__ import annotations

import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import EdgeportError, TargetError

DEVICES = Path(__file__).parent
CALIBRATION = DEVICES / "calibration.toml"
ENGINES = ("cpu", "gpu", "npu")


class DeviceError(EdgeportError):
    """A device name or profile file edgeport cannot use (bad input: exit 2)."""


@dataclass(frozen=True)
class Point:
    """One published measurement (devices/calibration.toml)."""

    device: str
    model: str
    runtime: str
    precision: str
    bytes: float
    decode_tokens_per_s: float
    use: str
    source: str
    matmul_parameters: float | None = None
    prefill_tokens_per_s: float | None = None

    @property
    def bandwidth_gbs(self) -> float:
        """The effective bandwidth this point implies: the weights' bytes read per second."""
        return self.bytes * self.decode_tokens_per_s / 1e9

    @property
    def compute_gops(self) -> float | None:
        if self.matmul_parameters is None or self.prefill_tokens_per_s is None:
            return None
        return 2 * self.matmul_parameters * self.prefill_tokens_per_s / 1e9

    @property
    def compute_class(self) -> str:
        return compute_class(self.precision)


def compute_class(precision: str, int8_activations: bool = False) -> str:
    """The arithmetic a precision's matmuls run in: "int8" (8-bit activations: a8w4, a8w8, and weight-only
    schemes whose runtime quantizes activations), "float16" (fp16/bf16) or "float32"."""
    if precision.startswith("a8") or int8_activations:
        return "int8"
    if precision in ("fp16", "bf16") or precision.startswith("w"):  # weight-only: dequantized to 16-bit floats
        return "float16"
    return "float32"


@dataclass(frozen=True)
class Fit:
    """A device's effective figures and where each came from."""

    peak_bandwidth_gbs: float  # the profile's
    bandwidth_fraction: float  # of that peak
    bandwidth_from: str  # "fitted on N points" or "prior: ..."
    compute_gops: dict[str, float] = field(default_factory=dict)  # arithmetic -> effective GOPS
    compute_from: dict[str, str] = field(default_factory=dict)  # arithmetic -> "N published prefill point(s)"

    @property
    def bytes_per_s(self) -> float:
        """The effective bandwidth every estimate divides by."""
        return self.bandwidth_fraction * self.peak_bandwidth_gbs * 1e9

    @property
    def bandwidth(self) -> str:
        return f"{self.bandwidth_fraction:.0%} of {self.peak_bandwidth_gbs:g} GB/s ({self.bandwidth_from})"


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    engine: str
    peak_bandwidth_gbs: float | None = None
    peak_bandwidth_source: str = ""
    app_limit_mb: float | None = None
    app_limit_source: str = ""
    npu: dict | None = None  # Ethos-U: vela's accelerator, system_config, memory_mode

    @property
    def runs_language_models(self) -> bool:
        return self.peak_bandwidth_gbs is not None


def builtin_device_names() -> list[str]:
    return sorted(p.stem for p in DEVICES.glob("*.toml") if p.name != CALIBRATION.name)


def load_device(name_or_path: str) -> Device:
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        path = DEVICES / f"{name_or_path}.toml"
        if not path.is_file() or path == CALIBRATION:
            raise DeviceError(f"unknown device {name_or_path!r}: use one of {', '.join(builtin_device_names())} "
                              f"or a .toml file written like devices/snapdragon-8-gen-3.toml")
    try:
        data = tomllib.loads(path.read_text())
        memory = data.get("memory", {})
        device = Device(name=data["name"], description=data["description"], engine=data["engine"],
                        peak_bandwidth_gbs=memory.get("peak_bandwidth_gbs"),
                        peak_bandwidth_source=memory.get("peak_bandwidth_source", ""),
                        app_limit_mb=memory.get("app_limit_mb"), app_limit_source=memory.get("app_limit_source", ""),
                        npu=data.get("npu"))
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise DeviceError(f"{path}: not a device profile ({exc}): write it like devices/snapdragon-8-gen-3.toml, "
                          f"with name, description, engine and a [memory] or [npu] table") from None
    if device.engine not in ENGINES:
        raise DeviceError(f"{path}: engine {device.engine!r}: use one of {', '.join(ENGINES)}")
    if device.npu is None and not device.peak_bandwidth_gbs:
        raise DeviceError(f"{path}: [memory] peak_bandwidth_gbs is missing: the decode estimate divides by it")
    return device


def device_list(value: object, origin: str) -> tuple[str, ...]:
    """A target's `devices = [...]`: the profiles its report estimates for, each checked to load."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TargetError(f"{origin}: devices must be a list of device names, e.g. devices = [\"snapdragon-8-gen-3\"] "
                          f"(built in: {', '.join(builtin_device_names())})")
    for name in value:
        try:
            load_device(name)
        except DeviceError as exc:
            raise TargetError(f"{origin}: {exc}") from None
    return tuple(value)


def load_points(path: Path = CALIBRATION) -> list[Point]:
    return [Point(**row) for row in tomllib.loads(path.read_text())["points"]]


def fit(device: Device, points: list[Point] | None = None) -> Fit:
    """The device's effective figures from its "fit" points; the prior where it has none."""
    points = load_points() if points is None else points
    fitted = [p for p in points if p.use == "fit"]
    own = [p for p in fitted if p.device == device.name]
    compute, compute_from = {}, {}
    for kind in sorted({p.compute_class for p in own if p.compute_gops}):
        rates = [p.compute_gops for p in own if p.compute_class == kind and p.compute_gops]
        compute[kind], compute_from[kind] = statistics.median(rates), f"{len(rates)} published prefill point(s)"
    if own:
        fraction = statistics.median(p.bandwidth_gbs for p in own) / device.peak_bandwidth_gbs
        return Fit(device.peak_bandwidth_gbs, fraction, f"fitted on {len(own)} published decode point(s)", compute,
                   compute_from)
    peaks = {d.name: d.peak_bandwidth_gbs for d in map(load_device, sorted({p.device for p in fitted}))}
    by_device = {name: statistics.median(p.bandwidth_gbs for p in fitted if p.device == name) / peak
                 for name, peak in peaks.items()}
    return Fit(device.peak_bandwidth_gbs, statistics.median(by_device.values()),
               f"prior: no published point on this device; the median fraction of peak over {len(by_device)} "
               f"calibrated devices", compute, compute_from)


def held_out_errors(points: list[Point] | None = None) -> list[dict]:
    """Every held-out point against the estimate fitted without it: decode (and prefill where published)."""
    points = load_points() if points is None else points
    rows = []
    for point in (p for p in points if p.use == "held-out"):
        device = load_device(point.device)
        effective = fit(device, points)
        decode = effective.bytes_per_s / point.bytes
        row = {"device": point.device, "model": point.model, "runtime": point.runtime, "source": point.source,
               "decode_measured": point.decode_tokens_per_s, "decode_estimated": round(decode, 2),
               "decode_error": round(decode / point.decode_tokens_per_s - 1, 3)}
        rate = effective.compute_gops.get(point.compute_class)
        if rate and point.prefill_tokens_per_s and point.matmul_parameters:
            prefill = rate * 1e9 / (2 * point.matmul_parameters)
            row.update(prefill_measured=point.prefill_tokens_per_s, prefill_estimated=round(prefill, 1),
                       prefill_error=round(prefill / point.prefill_tokens_per_s - 1, 3))
        rows.append(row)
    return rows
