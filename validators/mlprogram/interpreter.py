"""Execute an ML Program's main function with NumPy.

State (iOS18): a stateful program's states (a language model's KV cache) live in the interpreter
between runs, zero-filled at load and by reset_states(), as Core ML's make_state() gives them;
read_state returns a state's value and write_state replaces it.

Constants and constexpr weight decompression are computed once per interpreter, not once per run.

fp16 semantics: every tensor the program declares as fp16 is stored rounded to float16 after the op
that makes it (arithmetic is carried out in float32, as GPU and Neural Engine kernels accumulate
wider than they store), so the reported parity resembles what a device computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.errors import ArtifactError
from validators.mlprogram.ops import OPS, Args
from validators.mlprogram.reader import FLOAT16, MIL_DTYPES, Block, Op, Program, read_mlpackage


class UnsupportedMilOp(ArtifactError):
    """The program uses an op the reference interpreter does not implement."""


def _store(value, code: int | None):
    if code is None:
        return value
    dtype = MIL_DTYPES[code][0] if code in MIL_DTYPES else None
    array = np.asarray(value)
    if code == FLOAT16:
        return array.astype(np.float16)
    if dtype is not None and array.dtype != dtype and array.dtype.kind in "fiub":
        return array.astype(dtype)
    return array


class Interpreter:
    def __init__(self, program: Program):
        self.program = program
        missing = sorted(self._op_types(program.main) - set(OPS) - set(_CONTROL_FLOW) - set(_STATE_OPS) - {"const"})
        if missing:
            raise UnsupportedMilOp(f"the ML Program uses MIL op(s) {', '.join(missing)} that the reference "
                                   "interpreter does not implement; validate on macOS with Core ML")
        self._constants: dict[str, object] | None = None
        self.states: dict[str, np.ndarray] = {}
        self.reset_states()

    def reset_states(self) -> None:
        for name, code, shape in self.program.states:
            self.states[name] = np.zeros(shape, MIL_DTYPES[code][0])

    @classmethod
    def load(cls, path: Path) -> Interpreter:
        return cls(read_mlpackage(path))

    def _op_types(self, block: Block) -> set[str]:
        found = set()
        for op in block.operations:
            found.add(op.type)
            for inner in op.blocks:
                found |= self._op_types(inner)
        return found

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.run_keeping(feeds, [])[0]

    def run_keeping(self, feeds: dict[str, np.ndarray], names: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The outputs, and the values of the named variables of the main block."""
        env = dict(self._constant_env())
        for name, code, _shape in self.program.inputs:
            if name not in feeds:
                raise ArtifactError(f"the ML Program needs input {name!r}")
            env[name] = _store(feeds[name], code)
        outputs = self._run_block(self.program.main, env)
        return [np.asarray(o) for o in outputs], [np.asarray(env[name]) for name in names]

    def _constant_env(self) -> dict[str, object]:
        """The main block's constants and decompressed weights, computed on the first run."""
        if self._constants is None:
            env: dict[str, object] = {}
            for op in self.program.main.operations:
                if _is_constant(op):
                    self._run_op(op, env)
            self._constants = env
        return self._constants

    def constant_values(self, names: list[str]) -> dict[str, np.ndarray]:
        """Values of main-block variables computed from constants alone (a const, or a constexpr_* op
        decompressing a weight), without running the program."""
        producers = {name: op for op in self.program.main.operations for name, _ in op.outputs}
        env: dict[str, object] = {}

        def evaluate(name: str) -> None:
            if name in env:
                return
            op = producers[name]
            for bound in op.inputs.values():
                for value in bound:
                    if isinstance(value, str):
                        evaluate(value)
            self._run_op(op, env)

        for name in names:
            evaluate(name)
        return {name: np.asarray(env[name]) for name in names}

    def _run_block(self, block: Block, env: dict) -> list:
        for op in block.operations:
            if not (_is_constant(op) and op.outputs[0][0] in env):
                self._run_op(op, env)
        return [env[name] for name in block.outputs]

    def _resolve(self, bound: list, env: dict) -> list:
        return [env[v] if isinstance(v, str) else v for v in bound]

    def _run_op(self, op: Op, env: dict) -> None:
        if op.type == "const":
            env[op.outputs[0][0]] = _store(op.attributes["val"], op.outputs[0][1])
            return
        if op.type in _STATE_OPS:
            self._state_op(op, env)
            return
        values = {name: self._resolve(bound, env) for name, bound in op.inputs.items()}
        if op.type == "while_loop":
            results = self._while_loop(op, values["loop_vars"], env)
        elif op.type == "cond":
            branch = op.blocks[0] if bool(np.asarray(values["pred"][0])) else op.blocks[1]
            results = self._run_block(branch, dict(env))
        else:
            results = OPS[op.type](Args(values, op.attributes))
        for (name, code), value in zip(op.outputs, results, strict=True):
            env[name] = _store(value, code)

    def _state_op(self, op: Op, env: dict) -> None:
        (state,) = op.inputs["input"]
        if state not in self.states:
            raise ArtifactError(f"{op.type} names {state!r}, which is not a state of the program")
        if op.type == "read_state":
            env[op.outputs[0][0]] = self.states[state]
            return
        (data,) = self._resolve(op.inputs["data"], env)
        stored = self.states[state]
        if np.shape(data) != stored.shape:
            raise ArtifactError(f"write_state of shape {np.shape(data)} into state {state!r} of shape {stored.shape}")
        self.states[state] = np.asarray(data).astype(stored.dtype, copy=False)

    def _while_loop(self, op: Op, loop_vars: list, env: dict) -> list:
        cond_block, body_block = op.blocks
        state = list(loop_vars)
        for _ in range(1_000_000):  # a bound, so a malformed program cannot hang validation
            scope = dict(env) | dict(zip(cond_block.inputs, state, strict=True))
            if not bool(np.asarray(self._run_block(cond_block, scope)[0])):
                return state
            scope = dict(env) | dict(zip(body_block.inputs, state, strict=True))
            state = self._run_block(body_block, scope)
        raise ArtifactError("while_loop did not terminate within 1,000,000 iterations")


_CONTROL_FLOW = ("while_loop", "cond")
_STATE_OPS = ("read_state", "write_state")  # coreml_update_state is serialized as write_state + read_state


def _is_constant(op: Op) -> bool:
    return op.type == "const" or op.type.startswith("constexpr_")
