"""The error base every edgeport package raises for problems the user can fix.

It lives in `targets`, the package with no heavy imports that exporter and validators both
depend on, so the CLI can catch one type and map it to exit code 2.
"""


class EdgeportError(Exception):
    """A problem with the user's input or with a conversion that could not be done (exit 2).

    The message is one line saying what is wrong and what to do about it.
    """

    exit_code = 2


class TargetError(EdgeportError):
    """An unknown target, or a target file that does not validate."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (libraries raise pages), for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
