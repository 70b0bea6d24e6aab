"""The export's options are declared once (exporter/options.py): the CLI's export command, the Python API, the
build file and the language-model kind's refusals read that declaration and nothing else."""

from __future__ import annotations

import dataclasses
import inspect

from exporter.options import FLAG, LIST, OPTIONS, PATH, ExportOptions, build_key, flag


def test_the_cli_export_command_has_a_flag_for_every_declared_option_and_no_other():
    import typer

    from exporter.cli import app

    command = typer.main.get_command(app).commands["export"]
    flags = {opt for param in command.params for opt in param.opts if opt.startswith("--")} - {"--debug"}
    assert flags == {flag(name) for name in OPTIONS if flag(name)}
    helps = {param.name: param.help for param in command.params}
    assert helps["calib"] == OPTIONS["calib"]["help"] and helps["output_kinds"] == OPTIONS["output_kinds"]["help"]


def test_the_api_takes_every_option_by_its_declared_name():
    from edgeport import api

    taken = set(inspect.signature(api.export).parameters) - {"progress"}
    assert taken == {f.name for f in dataclasses.fields(ExportOptions)}


def test_the_build_file_takes_every_path_flag_and_list_option_under_its_flags_name():
    from exporter.builder.buildfile import FLAG_KEYS, LIST_KEYS, MODEL_KEYS, PATH_KEYS, ModelEntry

    declared = {kind: {build_key(n) for n, meta in OPTIONS.items() if meta["build"] == kind}
                for kind in (PATH, FLAG, LIST)}
    assert (set(PATH_KEYS), set(FLAG_KEYS), set(LIST_KEYS)) == (declared[PATH], declared[FLAG], declared[LIST])
    assert set(MODEL_KEYS) == {"model", "name", "targets"} | declared[PATH] | declared[FLAG] | declared[LIST]
    entry = ModelEntry("demo:digits", "digits", ("android",), {"calib": "c.npz"}, {"trust_pickle": True},
                       {"output_kind": ("logits:classification",)})
    args = entry.export_args()
    assert "--calib" in args and "--trust-pickle" in args and "--output-kind" in args
    assert {a for a in args if a.startswith("--")} <= {flag(n) for n in OPTIONS} | {"--no-auto-precision"}


def test_what_a_language_model_target_refuses_is_named_by_its_declared_flag():
    from exporter.kinds.causal_lm.export import UNREAD_OPTIONS

    assert set(UNREAD_OPTIONS) <= {name for name in OPTIONS if flag(name)}


def test_command_line_spellings_are_parsed_once_for_every_caller():
    options = ExportOptions(inputs=["x:1x3:float32"], output_kinds=["logits:embedding"])
    assert options.inputs[0].name == "x" and options.inputs[0].shape == (1, 3)
    assert options.output_kinds == {"logits": "embedding"}
    assert ExportOptions(output_kinds={"y": "tensor"}).output_kinds == {"y": "tensor"}
