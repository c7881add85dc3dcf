"""The ssltk command line, driven through typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ssltk import __version__
from ssltk.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_help_and_version():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("list-plugins", "validate", "schema"):
        assert command in result.output
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"ssltk {__version__}"


def test_every_command_is_one_registered_module_and_documented():
    from pathlib import Path

    from ssltk.cli import COMMANDS

    package = Path(__file__).parents[1] / "ssltk" / "cli"
    modules = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    assert set(COMMANDS.values()) == modules  # one module per command, each registered
    docs = "\n".join(p.read_text() for p in [package.parents[1] / "README.md",
                                              *package.parents[1].glob("docs/**/*.md")])
    assert [n for n in COMMANDS if f"ssltk {n}" not in docs] == []


def test_every_command_has_help_text():
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help or command.short_help, f"command '{name}' has no help text"


def test_list_plugins_table_and_json():
    result = invoke("list-plugins")
    assert result.exit_code == 0
    assert "backbones" in result.output and "resnet18" in result.output
    rows = json.loads(invoke("list-plugins", "--json").output)
    backbones = next(r for r in rows if r["name"] == "backbones")
    assert backbones["distribution"] == "ssltk" and backbones["version"] == __version__
    assert "resnet50" in backbones["components"]["backbones"]


def test_list_plugins_kind_filter_and_bad_kind():
    rows = json.loads(invoke("list-plugins", "--json", "--kind", "backbones").output)
    assert rows and all(set(r["components"]) <= {"backbones"} for r in rows)
    assert invoke("list-plugins", "--kind", "losses").exit_code == 2


def test_disable_plugin_option():
    rows = json.loads(invoke("--disable-plugin", "backbones", "list-plugins", "--json").output)
    assert next(r for r in rows if r["name"] == "backbones")["status"] == "disabled"


GOOD = """
name = "demo"
[data]
pretrain_store = "a.h5"
finetune_store = "b.h5"
target = "diagnosis"
[backbone]
name = "resnet18"
[pretrain]
objectives = [{name = "simclr"}]
[finetune]
label_fractions = [0.1]
"""


def test_validate_reports_one_line_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('name = "resnet18"', 'name = "resnet18"\nout_dim = "x"'))
    result = invoke("validate", str(bad))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"Error: {bad}: backbone.out_dim: Input should be a valid integer, "
                     "unable to parse string as an integer"]
    assert "Traceback" not in result.output


def test_debug_shows_the_exception(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("[backbone]", "[backbon]"))
    result = invoke("--debug", "validate", str(bad))
    assert result.exit_code != 0 and result.exception is not None
    assert "backbon" in str(result.exception)


def test_schema_is_json():
    schema = json.loads(invoke("schema").output)
    assert schema["title"] == "BenchmarkConfig"
