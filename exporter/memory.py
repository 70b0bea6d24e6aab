"""The export's own memory: the peak resident set of each step, and the memory this machine leaves an export.

A step's peak is Linux's high-water mark (VmHWM), reset at the step's start by writing 5 to /proc/self/clear_refs,
so each step reports its own peak rather than the largest so far. Where the reset is refused (another kernel, a
sandbox) the figures are the running peak, and the record says so."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from exporter.errors import UserInputError

GB = 1e9
_STATUS, _CLEAR_REFS, _MEMINFO = Path("/proc/self/status"), Path("/proc/self/clear_refs"), Path("/proc/meminfo")
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def _status_kb(field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set since the last reset (or since it started)."""
    kb = _status_kb("VmHWM")
    return 1024 * (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class StepMemory:
    """Peak RSS per named step of one export (`with step("onnx fp32"): ...`), and the peak over all of them. Steps
    nest: a step's peak includes the steps inside it (the high-water mark is folded into every open step before
    an inner step resets it)."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.open: list[str] = []
        self.per_step = True  # False once a reset is refused: each figure is then the peak so far
        self.overall = peak_rss_bytes()

    def _fold(self) -> None:
        peak = peak_rss_bytes()
        self.overall = max(self.overall, peak)
        for name in self.open:
            self.peaks[name] = max(self.peaks.get(name, 0), peak)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._fold()
        self.per_step = _reset_peak() and self.per_step
        self.open.append(name)
        try:
            yield
        finally:
            self._fold()
            self.open.remove(name)

    def record(self) -> dict:
        """export.json's `memory`: megabytes, as the report prints them."""
        self._fold()
        return {"peak_rss_mb": round(self.overall / 1e6), "per_step": self.per_step,
                "steps_mb": {name: round(peak / 1e6) for name, peak in self.peaks.items()}}


_meter = StepMemory()  # the high-water mark is the process's, so is its meter


def begin() -> StepMemory:
    """A fresh meter for one export (the Python API may run several in one process)."""
    global _meter
    _reset_peak()
    _meter = StepMemory()
    return _meter


def step(name: str) -> contextlib.AbstractContextManager[None]:
    """Measure the peak RSS of what runs inside, under `name`, in the current export's meter."""
    return _meter.step(name)


def hand_back() -> None:
    """Free what the libraries keep between lowerings and return freed heap to the system. torch's fake-tensor
    dispatch cache (one dict for the process) and ExecuTorch's unbounded lru_cache of node comparisons hold, in
    their keys, the graphs they saw, ExecuTorch's lowered delegates among them with their programs' weights: every
    .pte variant stayed alive to the end of the export."""
    if "torch" in sys.modules:
        from torch._subclasses.fake_tensor import FakeTensorMode

        FakeTensorMode.cache_clear()
    if backend_utils := sys.modules.get("executorch.exir.backend.utils"):
        with contextlib.suppress(AttributeError):
            backend_utils.is_same_node.cache_clear()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed arenas otherwise


def available_bytes() -> tuple[int, str]:
    """What an export may use here: the kernel's estimate of memory available without swapping, or the cgroup's
    limit when that is lower; with where the figure came from."""
    figures = []
    with contextlib.suppress(OSError, ValueError):
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                figures.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
    for path in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text().strip()
            if text != "max" and int(text) < 1 << 60:
                figures.append((int(text), f"the cgroup limit in {path}"))
    return min(figures) if figures else (1 << 62, "unknown (no /proc/meminfo)")


class Need(NamedTuple):
    """What an export is estimated to need, before its model is loaded."""

    at_least: int  # bytes: the estimate at the most favourable error measured; above the memory, it is refused
    about: int  # bytes: the estimate
    how: str  # how it was estimated, for the message and the report


def preflight(need: Need | None, limit_gb: float | None, spec: object, progress: Callable[[str], None]) -> dict:
    """Refuse, before the model is loaded, an export that needs at least more than the memory it may use (the
    --memory-limit given, or what this machine has available); say so where only the estimate is above it. Returns
    export.json's memory.preflight record."""
    available, where = (int(limit_gb * GB), "--memory-limit") if limit_gb else available_bytes()
    record = {"available_gb": round(available / GB, 2), "available_from": where}
    if need is None:
        return record | {"checked": False, "why": "this source's size is only known once it is built (demo, "
                                                  "factory or a tensor model): no estimate before loading"}
    figures = f"at least {need.at_least / GB:.1f} GB, about {need.about / GB:.1f} GB: {need.how}"
    if need.at_least > available:
        raise UserInputError(f"{spec}: this export needs {figures}; {where} leaves it {available / GB:.1f} GB: "
                             "export on a machine with more memory, or pass --memory-limit GB if more will be free "
                             "when it runs")
    if need.about > available:
        progress(f"memory: this export may not fit ({figures}; {available / GB:.1f} GB available, {where}); going on")
    return record | {"checked": True, "needed_gb": round(need.about / GB, 2),
                     "at_least_gb": round(need.at_least / GB, 2), "estimate": need.how}
