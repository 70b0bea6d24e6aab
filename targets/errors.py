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
