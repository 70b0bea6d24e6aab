"""Atomic artifact directories: build in a hidden sibling, move into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty work directory; on success it replaces `final`, on any failure it vanishes."""
    created_parent = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    os.chmod(work, 0o755)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if created_parent:
            with contextlib.suppress(OSError):
                final.parent.rmdir()
        raise
    previous = final.with_name(f".{final.name}.previous-{os.getpid()}")
    if final.exists():
        os.replace(final, previous)
    os.replace(work, final)
    shutil.rmtree(previous, ignore_errors=True)
