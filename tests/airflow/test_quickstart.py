"""The README's quick start, run as written, with Airflow's defaults (``load_examples = True``).

The quick start's DAG file is cut out of README.md, saved in a fresh dags folder and run with the real
``airflow dags test``; the lines the README says to expect must appear, in order. Airflow with examples on
also loads the provider's shipped example DAGs: neither command may log an error or a traceback that
comes from the provider (Airflow's own example DAGs may log theirs, e.g. a missing kubernetes package).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from support.airflow_env import EXAMPLES, AirflowEnv
from support.processes import ROOT

pytestmark = pytest.mark.slow

EXAMPLES_ON = {"AIRFLOW__CORE__LOAD_EXAMPLES": "True"}
PROVIDER = re.compile(r"checkmate", re.IGNORECASE)


def quick_start() -> tuple[str, list[str]]:
    """The quick start's DAG file and its expected output lines, as README.md has them."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Quick start\n") :]
    section = section[: section.index("\n## ", 1)]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    expected = re.search(r"```text\n(.*?)```", section, re.DOTALL)
    assert code and expected, "the quick start needs a python block (the DAG) and a text block (the output)"
    return code.group(1), expected.group(1).splitlines()


def provider_errors(output: str, planned: str = "") -> list[str]:
    """Error lines and tracebacks in ``output`` that mention the provider, except the ``planned`` failure."""
    blocks = re.split(r"\n(?=\S*\d{4}-\d\d-\d\dT)", output)  # one block per log record, tracebacks included
    bad = [b for b in blocks if re.search(r"\[error|Traceback|Could not load provider", b, re.IGNORECASE)]
    return [b[:1500] for b in bad if PROVIDER.search(b) and not (planned and planned in b)]


def assert_in_order(output: str, lines: list[str]) -> None:
    """Each expected line appears after the previous one; ``...`` in a line stands for any text."""
    position = 0
    for line in lines:
        pattern = r".*?".join(re.escape(part) for part in re.split(r"\s*\.\.\.\s*", line))
        match = re.compile(pattern).search(output, position)
        assert match, f"expected, after position {position}: {line!r}\n{output[-6000:]}"
        position = match.end()


@pytest.fixture(scope="module")
def quickstart_env(
    airflow_env_factory: Callable[[Path], AirflowEnv], tmp_path_factory: pytest.TempPathFactory
) -> AirflowEnv:
    dags = tmp_path_factory.mktemp("quickstart_dags")
    (dags / "quickstart_etl.py").write_text(quick_start()[0])
    return airflow_env_factory(dags)


def test_quick_start_code_is_lint_clean(tmp_path: Path) -> None:
    """The DAG file passes the project's own ruff check and format, like every Python file here."""
    path = tmp_path / "quickstart_etl.py"
    path.write_text(quick_start()[0])
    ruff = str(Path(sys.executable).with_name("ruff"))
    for args in (
        ["check", "--isolated", "--line-length", "120", "--select", "E,F,W,I,B,UP", str(path)],
        ["format", "--check", "--line-length", "120", str(path)],
    ):
        proc = subprocess.run([ruff, *args], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_quick_start_runs_as_written(quickstart_env: AirflowEnv) -> None:
    """``airflow dags test quickstart_etl`` succeeds and prints what the README shows, with examples on."""
    proc = quickstart_env.run("dags", "test", "quickstart_etl", extra_env=EXAMPLES_ON)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert_in_order(proc.stdout, quick_start()[1])
    assert "airflow-provider-checkmate-example-dags" in proc.stdout, "the shipped example DAGs are a bundle"
    # the transform stage's planned failure is the one error the run logs (and README shows it)
    assert provider_errors(proc.stdout, planned="ConnectionError: warehouse connection dropped") == []
    assert "Could not load provider module" not in proc.stdout


def test_examples_on_load_the_shipped_example_dags_without_errors(quickstart_env: AirflowEnv) -> None:
    """Parsing every bundle (Airflow's examples, the provider's) logs nothing wrong about the provider."""
    proc = quickstart_env.run("dags", "reserialize", extra_env=EXAMPLES_ON)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert provider_errors(proc.stdout) == []
    listing = quickstart_env.run("dags", "list", "-o", "plain", extra_env=EXAMPLES_ON, check=True).stdout
    shipped = {p.stem for p in EXAMPLES.glob("*.py")}
    listed = {line.split()[0] for line in listing.splitlines() if "airflow-provider-checkmate-example-dags" in line}
    assert listed == shipped, listing[-4000:]
