"""The failures the command line tells apart, by exit code: a missed budget (1), bad input or a
conversion that cannot be done (2, an EdgeportError whose one-line message says what to do), and
an internal error, a bug in edgeport or a library (3, INTERNAL_ERROR_EXIT).
"""

INTERNAL_ERROR_EXIT = 3


class EdgeportError(Exception):
    """A problem with the user's input or with a conversion that could not be done (exit 2).

    The message is one line saying what is wrong and what to do about it.
    """

    exit_code = 2


class TargetError(EdgeportError):
    """An unknown target, or a target file that does not validate."""


class ArtifactError(EdgeportError):
    """A missing, unreadable or corrupt artifact directory, manifest or artifact (exit 2)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (libraries raise pages), for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


# import name -> the pip package that provides it, for the optional converters and runtimes
PIP_PACKAGES = {"litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert",
                "ai_edge_quantizer": "ai-edge-quantizer", "coremltools": "coremltools", "onnx": "onnx",
                "onnxruntime": "onnxruntime", "onnxscript": "onnxscript", "onnxslim": "onnxslim",
                "ethosu": "ethos-u-vela", "transformers": "transformers", "gguf": "gguf",
                "executorch": "executorch", "tensorflow": "tensorflow", "sklearn": "scikit-learn"}


class MissingDependencyError(EdgeportError):
    """An optional converter or runtime is not installed: name the pip package, not the import."""

    def __init__(self, exc: ModuleNotFoundError):
        module = (exc.name or "").split(".")[0]
        package = PIP_PACKAGES.get(module, module)
        super().__init__(f"{package} is not installed (needed here for the module {exc.name}); install it with "
                         f"`pip install {package}` (the Makefile's `make install` installs every converter)")
