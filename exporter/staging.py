"""Atomic artifact directories: build in a hidden sibling, move into place only when complete.

The hidden sibling is named after the process (.<name>.partial-<pid>-<random>): an export that was
killed outright (SIGKILL, a power cut) cannot clean up after itself, so the next export into the
same place removes the siblings whose process is gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(final: Path) -> list[Path]:
    """Staging directories of `final` left by processes that no longer run."""
    removed = []
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        pid = stale.name.removeprefix(f".{final.name}.partial-").split("-")[0]
        if stale.is_dir() and (not pid.isdigit() or not _alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty work directory; on success it replaces `final`, on any failure it vanishes."""
    created = [p for p in final.parents if not p.exists()]  # what a failure removes again, innermost first
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
    os.chmod(work, 0o755)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):  # another export may have put something there meanwhile
                folder.rmdir()
        raise
    previous = final.with_name(f".{final.name}.previous-{os.getpid()}")
    if final.exists():
        os.replace(final, previous)
    os.replace(work, final)
    shutil.rmtree(previous, ignore_errors=True)


MIN_FREE_BYTES = 256 << 20  # below this an export's artifacts, reference and reports do not fit (a small model's)


def check_output_place(out: Path) -> None:
    """--out must be, or be creatable as, a writable folder with room: checked before any long step, so a typo
    or a full disk fails in a second, not after the conversions."""
    from exporter.errors import UserInputError

    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "--out" if existing == out else f"--out's parent {existing}"
        raise UserInputError(f"{what} {existing} is a file, not a folder; pass a folder for the artifacts")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"--out {out}: {existing} is not writable (read-only file system or no permission); "
                             "pass a folder you can write to")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise UserInputError(f"--out {out}: only {free >> 20} MiB free on {existing}'s file system, an export needs "
                             f"at least {MIN_FREE_BYTES >> 20} MiB; free space or pass another folder")
