"""The package's metadata as pip and Airflow see it (the installed distribution's, built from pyproject.toml).

One version, written once; the Airflow range declared is the one tested (this environment's Airflow is
inside it, and the floor is the release whose APIs the provider imports); every third-party package the
code imports is declared; classifiers, project URLs, license files and the changelog are there.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import airflow_checkmate
from airflow_checkmate.get_provider_info import get_provider_info
from support.processes import ROOT

DIST = "airflow-provider-checkmate"
#: import name -> the distribution that must be declared for it (pydantic pins pydantic-core exactly, so
#: declaring pydantic bounds it; a range of our own could only disagree with that pin and make pip backtrack)
ALIASES = {"airflow": "apache-airflow", "pydantic_core": "pydantic"}


def requirements(extra: str | None = None) -> list[Requirement]:
    """The declared requirements: the base ones, or those an extra adds."""
    found = []
    for text in metadata.requires(DIST) or []:
        req = Requirement(text)
        marker = str(req.marker or "")
        in_extra = re.search(r'extra == "([^"]+)"', marker)
        if (in_extra.group(1) if in_extra else None) == extra:
            found.append(req)
    return found


def declared_names(*extras: str | None) -> set[str]:
    return {canonicalize_name(r.name) for extra in extras for r in requirements(extra)}


def imported_top_level_modules() -> dict[str, str]:
    """Every third-party top-level module imported by the provider's code, with one file importing it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "airflow_checkmate").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "airflow_checkmate":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_the_version_is_written_once() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and not re.search(r"^version\s*=\s*\"", pyproject, re.MULTILINE)
    assert metadata.version(DIST) == airflow_checkmate.__version__
    assert get_provider_info()["versions"] == [airflow_checkmate.__version__]


def test_the_airflow_range_is_the_tested_one() -> None:
    (airflow,) = [r for r in requirements() if r.name == "apache-airflow"]
    installed = Version(metadata.version("apache-airflow"))
    assert installed in airflow.specifier, f"tests run on Airflow {installed}, outside {airflow.specifier}"
    floors = [Version(s.version) for s in airflow.specifier if s.operator == ">="]
    assert floors == [Version("3.3")], "3.0-3.2 lack what the provider imports; make install-check tests 3.3.0"
    assert any(s.operator == "<" and Version(s.version) == Version("4") for s in airflow.specifier)


def test_every_imported_package_is_declared_with_a_range() -> None:
    declared = declared_names(None, "s3", "postgres")
    distributions = metadata.packages_distributions()
    missing = {}
    for module, where in imported_top_level_modules().items():
        names = [ALIASES[module]] if module in ALIASES else distributions.get(module, [module])
        wanted = {canonicalize_name(name) for name in names}
        if not wanted & declared:
            missing[module] = where
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
    unbounded = [str(r) for r in requirements() if not r.specifier]
    assert unbounded == [], f"declared without a version range: {unbounded}"


def test_the_s3_extra_caps_what_aiobotocore_pins() -> None:
    """Open ranges made pip backtrack for 15 minutes and more: each of these needs an upper bound."""
    s3 = {r.name.lower(): r for r in requirements("s3")}
    for name in ("aiobotocore", "botocore", "boto3", "s3fs"):
        assert name in s3 and any(s.operator == "<" for s in s3[name].specifier), f"{name} uncapped in [s3]"


def test_classifiers_urls_and_license() -> None:
    meta = metadata.metadata(DIST)
    classifiers = meta.get_all("Classifier") or []
    floor = re.fullmatch(r">=3\.(\d+)", meta["Requires-Python"])
    assert floor, meta["Requires-Python"]
    for minor in range(int(floor.group(1)), 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert "Framework :: Apache Airflow :: Provider" in classifiers
    assert meta["License-Expression"] == "Apache-2.0"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(urls)
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "NOTICE").is_file() and "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_mypy_checks_the_lowest_supported_python() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    lowest = re.search(r'requires-python = ">=(3\.\d+)"', pyproject)
    assert lowest and f'python_version = "{lowest.group(1)}"' in pyproject
    assert f'target-version = "py{lowest.group(1).replace(".", "")}"' in pyproject


def test_the_example_dags_ship_where_airflow_looks_for_them() -> None:
    """Airflow imports the module named after the distribution and loads <it>/example_dags."""
    import airflow_provider_checkmate

    (folder,) = [Path(p) / "example_dags" for p in airflow_provider_checkmate.__path__]
    assert DIST.replace("-", "_") == airflow_provider_checkmate.__name__
    assert sorted(p.name for p in folder.glob("*.py")) != []
