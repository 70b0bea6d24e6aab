"""Model sources: the SPEC forms `edgeport export --model` accepts, loaded into a LoadedModel.

  demo:digits                 the embedded default (exporter/demo.py)
  path/to/file.py:factory     a callable returning an nn.Module or (module, example_inputs)
  package.module:factory      the same, imported from the environment
  model.pt2                   a program saved by torch.export.save
  model.pt / model.ts         a TorchScript archive (torch.jit.save)

A pickled checkpoint (torch.save of a whole module) runs arbitrary code when unpickled, so it is
loaded only with --trust-pickle; state dicts load with weights_only=True into a factory's module.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.data import Dataset
from exporter.errors import UserInputError
from exporter.specs import TensorSpec


@dataclass
class LoadedModel:
    name: str
    source: str
    kind: str  # "module" | "exported_program" | "torchscript"
    module: Any  # callable used for the PyTorch reference outputs
    example_inputs: tuple  # tensors, one per forward argument
    input_names: list[str]
    sha256: str
    program: Any = None  # a torch.export.ExportedProgram when the source is .pt2
    default_eval: Dataset | None = None
    default_calib: Dataset | None = None
    notes: list[str] = field(default_factory=list)


def state_dict_sha256(module: Any) -> str:
    """A hash of the weights: names, dtypes, shapes and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _tensors_from_specs(specs: list[TensorSpec]) -> tuple:
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors = []
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(*spec.shape, generator=generator).to(dtype))
        elif dtype == torch.bool:
            tensors.append(torch.zeros(*spec.shape, dtype=dtype))
        else:
            tensors.append(torch.randint(0, 2, spec.shape, generator=generator, dtype=dtype))
    return tuple(tensors)


def _forward_arg_names(module: Any) -> list[str]:
    try:
        forward = module.forward
        if hasattr(forward, "schema"):  # TorchScript method
            return [a.name for a in forward.schema.arguments[1:]]
        params = inspect.signature(forward).parameters.values()
        return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError, AttributeError):
        return []


def _as_example_tuple(value: Any, spec: str) -> tuple:
    import torch

    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, list | tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    raise UserInputError(f"{spec}: example inputs must be a tensor or a tuple of tensors, got {type(value).__name__}")


def _finish(module: Any, examples: tuple | None, input_specs: list[TensorSpec], spec: str,
            kind: str, name: str) -> LoadedModel:
    """Apply --input (it wins over bundled examples) and name the inputs."""
    import torch

    arg_names = _forward_arg_names(module)
    if input_specs:
        examples = _tensors_from_specs(input_specs)
        names = [s.name for s in input_specs]
    elif examples is None:
        wanted = ", ".join(f"--input {a}:1x...:float32" for a in arg_names) or "--input NAME:1x3x224x224:float32"
        raise UserInputError(f"{spec} came without example inputs; describe each forward argument: {wanted}")
    else:
        names = arg_names[: len(examples)] if len(arg_names) >= len(examples) else \
            [f"input_{i}" for i in range(len(examples))]
    # Fresh tensors with canonical strides: a numpy view can give a size-1 dim a stride that
    # converters (coremltools) read as a non-contiguous dim order.
    examples = tuple(torch.empty(t.shape, dtype=t.dtype).copy_(t) for t in examples)
    if arg_names and len(examples) > len(arg_names):
        raise UserInputError(f"{spec}: {len(examples)} inputs given but forward takes {len(arg_names)} "
                             f"({', '.join(arg_names)}); pass one --input per argument")
    return LoadedModel(name=name, source=spec, kind=kind, module=module, example_inputs=examples,
                       input_names=names, sha256=state_dict_sha256(module))


def _load_demo(spec: str) -> LoadedModel:
    import torch

    if spec != "demo:digits":
        raise UserInputError(f"unknown demo model {spec!r}; the embedded demo is demo:digits")
    from exporter.demo import CALIBRATION_SAMPLES, digits_splits, load_digits_cnn

    model = load_digits_cnn()
    x_train, _, x_eval, y_eval = digits_splits()
    loaded = _finish(model, (torch.from_numpy(x_eval[:1]),), [], spec, "module", "digits")
    loaded.default_eval = Dataset({"image": x_eval}, y_eval, "demo:digits held-out split")
    loaded.default_calib = Dataset({"image": x_train[:CALIBRATION_SAMPLES]}, None,
                                               f"demo:digits train split, first {CALIBRATION_SAMPLES}")
    return loaded


def call_factory(factory: Any, spec: str) -> tuple[Any, tuple | None]:
    import torch

    try:
        result = factory()
    except Exception as exc:  # the user's code: report it, do not crash
        raise UserInputError(f"{spec}: the factory raised {type(exc).__name__}: {exc}; fix the factory") from exc
    if isinstance(result, torch.nn.Module):
        return result, None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        return result[0], _as_example_tuple(result[1], spec)
    raise UserInputError(f"{spec}: the factory returned {type(result).__name__}; "
                         "return an nn.Module or (module, example_inputs)")


def import_factory(target: str, attr: str, spec: str) -> Any:
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise UserInputError(f"model file {target} does not exist; check the path in --model {spec}")
        module_name = f"edgeport_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
        import_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(import_spec)
        sys.modules[module_name] = module
        loader = import_spec.loader.exec_module
    else:
        module, loader = None, None
    try:
        if loader is not None:
            loader(module)
        else:
            module = importlib.import_module(target)
    except Exception as exc:
        raise UserInputError(f"{spec}: importing {target} failed with {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:12]
        raise UserInputError(f"{spec}: {target} has no callable {attr!r}; callables there: {', '.join(found)}")
    return factory


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except zipfile.BadZipFile:
        return []


def _load_weights_only(path: Path, spec: str) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserInputError(
            f"{spec} is a pickled checkpoint holding Python objects; unpickling it can run arbitrary code. "
            "Export it with torch.export.save or torch.jit.save, or pass --trust-pickle if you trust the file"
        ) from None
    except Exception as exc:
        raise UserInputError(f"{spec}: cannot read the file ({type(exc).__name__}: {exc})") from None


def _load_file(path: Path, spec: str, input_specs: list[TensorSpec], trust_pickle: bool) -> LoadedModel:
    import torch

    if not path.is_file():
        raise UserInputError(f"model file {path} does not exist; pass an existing .pt2, TorchScript file or "
                             "file.py:factory")
    names = _zip_names(path)
    if not names:
        raise UserInputError(f"{path} is not a PyTorch archive (not a zip); pass a .pt2 from torch.export.save, "
                             "a TorchScript file from torch.jit.save, or file.py:factory")
    if any(n.endswith("/serialized_exported_program.json") or "/models/" in n and n.endswith(".json")
           for n in names) or path.suffix == ".pt2":
        from common.errors import first_line
        from common.quiet import quiet

        try:
            with quiet("torch.export"):  # it logs its own traceback of a damaged archive before raising
                program = torch.export.load(str(path))
        except Exception as exc:
            raise UserInputError(f"{path}: torch.export.load failed ({type(exc).__name__}: {first_line(exc)}); "
                                 "re-save it with torch.export.save (--debug shows torch's own log)") from None
        module = program.module()
        examples = getattr(program, "example_inputs", None)
        examples = examples[0] if examples else _examples_from_program(program)
        loaded = _finish(module, examples, input_specs, spec, "exported_program", path.stem)
        loaded.program = program
        return loaded
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise UserInputError(f"{path}: torch.jit.load failed ({type(exc).__name__}: {exc})") from None
        return _finish(module.eval(), None, input_specs, spec, "torchscript", path.stem)
    # A torch.save pickle: a whole module (needs --trust-pickle) or a state dict (needs a factory).
    if trust_pickle:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(obj, torch.nn.Module):
            raise UserInputError(f"{path} holds a {type(obj).__name__}, not an nn.Module; "
                                 "for a state dict use file.py:factory --weights FILE")
        return _finish(obj.eval(), None, input_specs, spec, "module", path.stem)
    obj = _load_weights_only(path, spec)
    raise UserInputError(f"{path} holds a {type(obj).__name__} of weights, not a model; "
                         "pass file.py:factory that builds the model and --weights " + str(path))


def _examples_from_program(program: Any) -> tuple:
    import torch

    tensors = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            fake = node.meta["val"]
            shape = [int(d) for d in fake.shape]
            tensors.append(torch.zeros(shape, dtype=fake.dtype))
    return tuple(tensors)


def load_model(spec: str, input_specs: list[TensorSpec], *, weights: Path | None = None,
               trust_pickle: bool = False) -> LoadedModel:
    """Load any SPEC form. Raises UserInputError with what to fix on bad input."""
    if weights is not None and (spec.startswith("demo:") or ":" not in spec or Path(spec).is_file()):
        raise UserInputError(f"--weights loads a state dict into a factory's module (file.py:factory or "
                             f"package.module:factory); {spec} carries its own weights: drop --weights")
    if spec.startswith("demo:"):
        if input_specs:
            raise UserInputError(f"{spec} has its own example inputs; drop --input")
        loaded = _load_demo(spec)
    elif spec.endswith((".pt2", ".pt", ".pth", ".ts", ".torchscript", ".ptl")) or Path(spec).is_file():
        loaded = _load_file(Path(spec), spec, input_specs, trust_pickle)
    elif ":" in spec:
        target, _, attr = spec.rpartition(":")
        module, examples = call_factory(import_factory(target, attr, spec), spec)
        if weights is not None:
            _apply_weights(module, weights, spec)
        name = Path(target).stem if target.endswith(".py") else target.rsplit(".", 1)[-1]
        loaded = _finish(module.eval(), examples, input_specs, spec, "module", f"{name}-{attr}")
    else:
        raise UserInputError(f"--model {spec!r} is not a model spec; use demo:digits, path/to/file.py:factory, "
                             "package.module:factory, a .pt2 or a TorchScript file")
    return loaded


def load_module(module: Any, example_inputs: Any, input_specs: list[TensorSpec]) -> LoadedModel:
    """An nn.Module handed over in Python (the API), with its example inputs."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise UserInputError(f"model is a {type(module).__name__}; pass an nn.Module or a SPEC string "
                             "such as demo:digits or path/to/file.py:factory")
    examples = None if example_inputs is None else _as_example_tuple(example_inputs, type(module).__name__)
    name = type(module).__name__.lower()
    return _finish(module.eval(), examples, input_specs, f"python:{type(module).__name__}", "module", name)


def _apply_weights(module: Any, weights: Path, spec: str) -> None:
    if not weights.is_file():
        raise UserInputError(f"weights file {weights} does not exist")
    state = _load_weights_only(weights, str(weights))
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0:2]
        raise UserInputError(f"{weights} does not fit the module from {spec}: {' '.join(first)}") from None
