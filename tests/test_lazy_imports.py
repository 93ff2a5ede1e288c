"""What importing costs, checked as what gets imported (timings live in bench/startup.py, never in tests).

``import airflow_checkmate.checkmate`` must load neither SQLAlchemy, nor a storage backend, nor
Airflow, nor the provider's Airflow hook; the engine's own classes (run on files, reset, inspected) need
none of them either; and ``checkmate`` given both URLs answers
without importing Airflow. Each check runs in a fresh interpreter, so nothing imported here counts.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from support.processes import run_python

HEAVY = (
    "sqlalchemy",
    "airflow",
    "airflow_checkmate.hooks",
    "airflow_checkmate.hooks.checkmate",
    "airflow_checkmate.checkmate.io.sql",
    "airflow_checkmate.checkmate.registry",
)


def loaded_after(code: str) -> set[str]:
    """The heavy modules present in ``sys.modules`` after running ``code`` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    proc = run_python("-c", probe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_importing_the_engine_package_loads_nothing_heavy() -> None:
    assert loaded_after("import airflow_checkmate.checkmate") == set()


def test_the_engine_on_files_needs_no_sqlalchemy_nor_airflow() -> None:
    code = (
        "from airflow_checkmate.checkmate import BaseStage, BaseStageState, CheckMateEngine, TaskIO, RetryPolicy\n"
        "import tempfile\n"
        "class S(BaseStageState[int]): pass\n"
        "class A(BaseStage[S]):\n"
        "    def execute_stage(self, previous_state_copy): self.state.result = 1\n"
        "with CheckMateEngine(TaskIO.from_base_url(tempfile.mkdtemp()), 't', [A(stage_name='a', state=S())]) as e:\n"
        "    e.execute()\n"
        "    assert e.task_result == 1\n"
        "    e.reset(stage_name='a')\n"
        "    assert e.dump_stages(color=None)\n"
        "from airflow_checkmate.checkmate import read_snapshot\n"
        "assert read_snapshot(e.io, 't').status == 'CREATED'\n"
    )
    assert loaded_after(code) == set()


def test_a_name_of_the_package_is_there_when_asked_for() -> None:
    """Lazy names resolve on first use and are listed; an unknown name is an AttributeError as usual."""
    code = (
        "import airflow_checkmate.checkmate as cm\n"
        "assert 'TaskRegistry' in dir(cm) and cm.TaskRegistry.__name__ == 'TaskRegistry'\n"
        "try:\n    cm.NoSuchThing\nexcept AttributeError as exc:\n    assert 'NoSuchThing' in str(exc)\n"
        "else:\n    raise AssertionError('no AttributeError')\n"
    )
    assert loaded_after(code) == {"sqlalchemy", "airflow_checkmate.checkmate.registry"}


def test_checkmate_with_explicit_urls_does_not_import_airflow(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from airflow_checkmate.cli import main\n"
        f"code = main(['--base-url', {str(tmp_path / 'state')!r}, '--database-url', "
        f"{'sqlite:///' + str(tmp_path / 'r.db')!r}, 'list'])\n"
        "assert code == 0, code\n"
    )
    assert "airflow" not in loaded_after(code)


def test_the_engine_package_names_nothing_of_the_airflow_layer() -> None:
    """No import of (nor module path into) the provider's Airflow layer anywhere in the engine package;
    Airflow itself only inside the object-storage backend, which is loaded by URL scheme."""
    package = Path(__file__).resolve().parent.parent / "airflow_checkmate" / "checkmate"
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            named: list[str] = []
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                named = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = [node.value] if node.value.startswith("airflow_checkmate.") else []
            for name in named:
                layer = name.startswith("airflow_checkmate.") and not name.startswith("airflow_checkmate.checkmate")
                airflow = (name == "airflow" or name.startswith("airflow.")) and path.name not in (
                    "objectstorage.py",
                    "object_store.py",
                )
                if layer or airflow:
                    found.append(f"{path.relative_to(package)}: {name}")
    assert found == []


#: The backends that reach object storage through Airflow's ObjectStoragePath, loaded only by URL scheme.
AIRFLOW_BACKENDS = ("objectstorage.py", "object_store.py")
