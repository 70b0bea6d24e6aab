"""Problems with an artifact directory that stop validation before any figure is measured."""

from targets.errors import EdgeportError


class ArtifactError(EdgeportError):
    """A missing, unreadable or corrupt artifact directory, manifest or artifact (exit 2)."""
