"""edgeport's Python API, beside the CLI: the same pipeline, errors and artifacts.

    import edgeport
    result = edgeport.export(model, (example,), target="android", eval={"pixel_values": x, "labels": y})
    result.passed, result.directory, result.artifacts[0].parity.sqnr_db
    edgeport.validate("artifacts/mymodel/android")

Errors are edgeport's own (edgeport.EdgeportError; `.exit_code` is what the CLI would exit with).
Heavy libraries load on the first call, not on import."""

from edgeport.api import ArtifactResult, EdgeportError, Parity, Report, export, validate

__all__ = ["ArtifactResult", "EdgeportError", "Parity", "Report", "export", "validate"]
