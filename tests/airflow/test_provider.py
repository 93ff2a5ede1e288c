"""Provider registration: what ``airflow providers ...`` shows, and the metadata behind it.

The CLI runs in a child process with a temporary AIRFLOW_HOME (these commands need no metadata database,
so none is migrated) through ``airflow.__main__.main``, the function the ``airflow`` script runs: the
three commands share one interpreter so that Airflow is imported once, not three times.
"""

import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

import airflow_checkmate
from airflow_checkmate.get_provider_info import get_provider_info
from support.airflow_env import EXAMPLES, AirflowEnv
from support.processes import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DIST = PYPROJECT["name"]
VERSION = airflow_checkmate.__version__  # the one place it is written; pyproject.toml reads it from there
COMMANDS = ("list", "hooks", "links")


MARK = "=====checkmate-test-command-done====="
# Airflow's own CLI entry point (what the ``airflow`` script calls), run once per command in ONE child
# interpreter: three ``airflow`` processes would import Airflow three times.
CLI_SCRIPT = f"""
import sys
from airflow.__main__ import main
for cmd in {COMMANDS!r}:
    sys.argv = ["airflow", "providers", cmd, "-o", "json"]
    main()
    print({MARK!r}, flush=True)
"""


def json_rows(text: str) -> list[dict[str, Any]]:
    """The JSON table in a command's stdout (log lines printed at import may precede it)."""
    tables = [line for line in text.splitlines() if line.startswith("[")]
    assert tables, f"no JSON output in:\n{text[-3000:]}"
    return json.loads(tables[-1])


@pytest.fixture(scope="module")
def providers_cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """``airflow providers list|hooks|links -o json``, parsed, run with a fresh AIRFLOW_HOME."""
    env = AirflowEnv(tmp_path_factory.mktemp("providers_home"), EXAMPLES)
    proc = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT],
        env=env.env,
        cwd=env.home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"airflow providers exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    outputs = proc.stdout.split(MARK)
    assert len(outputs) == len(COMMANDS) + 1, proc.stdout[-3000:]
    return {cmd: json_rows(out) for cmd, out in zip(COMMANDS, outputs, strict=False)}


def test_providers_list_shows_the_package(providers_cli: dict[str, list[dict[str, Any]]]) -> None:
    rows = [r for r in providers_cli["list"] if r["package_name"] == DIST]
    assert len(rows) == 1, providers_cli["list"]
    assert rows[0]["version"] == VERSION
    assert "resum" in rows[0]["description"].lower()


def test_providers_hooks_shows_the_checkmate_hook(providers_cli: dict[str, list[dict[str, Any]]]) -> None:
    rows = [r for r in providers_cli["hooks"] if r["connection_type"] == "checkmate"]
    assert rows == [
        {
            "connection_type": "checkmate",
            "class": "airflow_checkmate.hooks.checkmate.CheckMateHook",
            "conn_id_attribute_name": "checkmate_conn_id",
            "package_name": DIST,
            "hook_name": "CheckMate",
        }
    ]


def test_providers_links_shows_the_state_link(providers_cli: dict[str, list[dict[str, Any]]]) -> None:
    names = [r["extra_link_class_name"] for r in providers_cli["links"]]
    assert "airflow_checkmate.links.checkmate.CheckMateStateLink" in names


def test_package_name_is_the_distribution_name() -> None:
    info = get_provider_info()
    assert info["package-name"] == DIST == "airflow-provider-checkmate"
    assert info["versions"][0] == VERSION
    assert importlib.metadata.version(DIST) == VERSION, "the installed package is not this tree's"


def test_entry_point_returns_the_provider_info() -> None:
    eps = [ep for ep in importlib.metadata.distribution(DIST).entry_points if ep.group == "apache_airflow_provider"]
    assert [ep.value for ep in eps] == ["airflow_checkmate.get_provider_info:get_provider_info"]
    assert PYPROJECT["entry-points"]["apache_airflow_provider"] == {"provider_info": eps[0].value}
    assert eps[0].load()() == get_provider_info()


def test_provider_info_is_valid_for_airflows_schema() -> None:
    import airflow
    import jsonschema

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def named_modules_and_classes(info: dict[str, Any]) -> tuple[set[str], set[str]]:
    modules: set[str] = set()
    classes: set[str] = set()
    for section in ("operators", "sensors", "hooks", "triggers", "transfers"):
        for entry in info.get(section, []):
            modules.update(entry["python-modules"])
    classes.update(info.get("extra-links", []))
    classes.update(info.get("hook-class-names", []))
    classes.update(c["hook-class-name"] for c in info.get("connection-types", []))
    classes.update(p["plugin-class"] for p in info.get("plugins", []))
    classes.update(info.get("notifications", []))
    return modules, classes


def test_every_named_module_and_class_imports() -> None:
    modules, classes = named_modules_and_classes(get_provider_info())
    assert {
        "airflow_checkmate.operators.checkmate",
        "airflow_checkmate.sensors.checkmate",
        "airflow_checkmate.hooks.checkmate",
        "airflow_checkmate.triggers.checkmate",
    } <= modules
    assert "airflow_checkmate.hooks.checkmate.CheckMateHook" in classes
    for module in modules:
        importlib.import_module(module)
    for path in classes:
        module, _, name = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type), path


def test_connection_type_matches_the_hook() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    module, _, name = conn_type["hook-class-name"].rpartition(".")
    hook = getattr(importlib.import_module(module), name)
    assert conn_type["connection-type"] == hook.conn_type == "checkmate"
    assert conn_type["hook-name"] == hook.hook_name
    assert {"base_url", "lease_seconds", "durable"} <= set(conn_type["conn-fields"])
    assert hasattr(hook, "test_connection")
