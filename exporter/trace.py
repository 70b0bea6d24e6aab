"""Trace once: torch.export for nn.Module sources, kept as-is for .pt2, TorchScript passed through.

When torch.export cannot capture a module (data-dependent Python control flow, say), the trace
falls back to TorchScript tracing at conversion time and records why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.batching import run_batched
from common.errors import first_line
from exporter.errors import UnsupportedOp, UserInputError
from exporter.sources import LoadedModel
from exporter.specs import BATCH, TensorSpec

TORCH_EXPORT = "torch.export"
TORCHSCRIPT = "torchscript"


@dataclass
class TracedModel:
    loaded: LoadedModel
    program: Any  # torch.export.ExportedProgram, or None when converters must trace TorchScript
    method: str  # TORCH_EXPORT or TORCHSCRIPT
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_batch: bool
    notes: list[str] = field(default_factory=list)

    @property
    def batch(self) -> int | None:
        """The fixed batch size the graph was traced with, or None when dim 0 is dynamic."""
        return None if self.dynamic_batch else int(self.loaded.example_inputs[0].shape[0])

    @property
    def example_inputs(self) -> tuple:
        return self.loaded.example_inputs

    def reference_outputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The PyTorch original's outputs, fed at the traced batch size."""
        import torch

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.loaded.input_names]
            with torch.no_grad():
                return [t.detach().float().numpy() if t.dtype in (torch.float16, torch.bfloat16) else t.numpy()
                        for t in flatten_outputs(self.loaded.module(*args))]

        return run_batched(run, {n: inputs[n] for n in self.loaded.input_names}, self.batch)


def flatten_outputs(value: Any) -> list:
    import torch
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def module_of(node: Any) -> tuple[str, str]:
    """(module path, class name) of the nn.Module a traced graph node came from, for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", "?"
    path, cls = list(stack.values())[-1]
    return path, str(cls).rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))


def unsupported_ops(program: Any, is_supported: Callable[[Any], bool], reason: str) -> list[UnsupportedOp]:
    """Every call in a traced program a converter cannot take, once per (op, module), with the module
    path it came from: what each format's preflight reports."""
    found: dict[tuple[str, str], UnsupportedOp] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or is_supported(node.target):
            continue
        path, cls = module_of(node)
        found.setdefault((str(node.target), path), UnsupportedOp(str(node.target), path, cls, reason))
    return list(found.values())


def not_exported(traced: TracedModel, converter_takes: str) -> list[UnsupportedOp]:
    """The preflight answer of a converter that takes torch.export programs only ("litert-torch converts"),
    for a model that was not captured by torch.export (none when it was)."""
    if traced.program is not None:
        return []
    return [UnsupportedOp("<whole model>", "", type(traced.loaded.module).__name__,
                          f"{converter_takes} torch.export programs only; this model was not captured by "
                          f"torch.export ({'; '.join(traced.notes)})")]


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _output_specs(loaded: LoadedModel, batch_symbolic: bool) -> list[TensorSpec]:
    import torch

    try:
        with torch.no_grad():
            outputs = flatten_outputs(loaded.module(*loaded.example_inputs))
    except Exception as exc:  # the user's module on the inputs it was given
        shapes = ", ".join(f"{name} {'x'.join(map(str, t.shape))} {_dtype_name(t.dtype)}"
                           for name, t in zip(loaded.input_names, loaded.example_inputs, strict=True))
        raise UserInputError(f"{loaded.source} cannot run on its example inputs ({shapes}): {type(exc).__name__}: "
                             f"{first_line(exc)}; pass --input with the shapes and dtypes forward takes") from exc
    if not outputs:
        raise UserInputError(f"{loaded.source}: forward returned no tensors; return a tensor or a tuple of tensors")
    names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    specs = []
    for name, tensor in zip(names, outputs, strict=True):
        shape: list[int | str] = list(tensor.shape)
        if batch_symbolic and shape:
            shape[0] = BATCH
        specs.append(TensorSpec(name, tuple(shape), _dtype_name(tensor.dtype)))
    return specs


def _input_specs(loaded: LoadedModel, dynamic: bool) -> list[TensorSpec]:
    specs = []
    for name, tensor in zip(loaded.input_names, loaded.example_inputs, strict=True):
        shape: list[int | str] = list(tensor.shape)
        if dynamic:
            shape[0] = BATCH
        specs.append(TensorSpec(name, tuple(shape), _dtype_name(tensor.dtype)))
    return specs


def _program_has_dynamic_batch(program: Any) -> bool:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            return not isinstance(node.meta["val"].shape[0], int)
    return False


def trace(loaded: LoadedModel, dynamic_batch: bool) -> TracedModel:
    import torch

    notes = list(loaded.notes)
    if loaded.kind == "exported_program":
        dynamic = _program_has_dynamic_batch(loaded.program)
        if dynamic_batch and not dynamic:
            raise UserInputError(f"{loaded.source} was saved with a fixed batch size; re-export it with "
                                 "dynamic_shapes for dim 0, or drop --dynamic-batch")
        return TracedModel(loaded, loaded.program, TORCH_EXPORT, _input_specs(loaded, dynamic),
                           _output_specs(loaded, dynamic), dynamic, notes)
    if loaded.kind == "torchscript":
        notes.append("source is TorchScript: converters trace the ScriptModule, torch.export is not used")
        return TracedModel(loaded, None, TORCHSCRIPT, _input_specs(loaded, dynamic_batch),
                           _output_specs(loaded, dynamic_batch), dynamic_batch, notes)

    outputs = _output_specs(loaded, dynamic_batch)  # runs the module once: a wrong --input fails here, quickly
    examples = loaded.example_inputs
    dynamic_shapes = None
    if dynamic_batch:
        if examples[0].shape[0] == 1:
            # torch.export specializes a dimension of size 1; trace with 2 so dim 0 stays symbolic.
            examples = tuple(torch.cat([t, t]) for t in examples)
            notes.append("traced with batch 2 (the example batch of 1 repeated) so dim 0 stays dynamic")
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in examples)
    try:
        program = torch.export.export(loaded.module, examples, dynamic_shapes=dynamic_shapes, strict=False)
        method = TORCH_EXPORT
    except Exception as exc:  # torch.export cannot capture every Python construct
        notes.append(f"torch.export failed ({type(exc).__name__}: {first_line(exc)}); converters trace TorchScript")
        program, method = None, TORCHSCRIPT
    return TracedModel(loaded, program, method, _input_specs(loaded, dynamic_batch), outputs, dynamic_batch, notes)
