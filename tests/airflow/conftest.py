"""Real Airflow for tests: an AIRFLOW_HOME with a migrated SQLite DB per dags folder (see support.airflow_env)."""

from collections.abc import Callable
from pathlib import Path

import pytest

from support.airflow_env import EXAMPLES, AirflowEnv


@pytest.fixture(scope="session")
def airflow_env_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], AirflowEnv]:
    """Make (once per dags folder per session) an AirflowEnv with a migrated DB."""
    made: dict[Path, AirflowEnv] = {}

    def make(dags_folder: Path) -> AirflowEnv:
        if dags_folder not in made:
            env = AirflowEnv(tmp_path_factory.mktemp("airflow_home"), dags_folder)
            env.migrate()
            made[dags_folder] = env
        return made[dags_folder]

    return make


@pytest.fixture(scope="session")
def examples_env(airflow_env_factory: Callable[[Path], AirflowEnv]) -> AirflowEnv:
    """Airflow with the project's dags_examples/ as its dags folder."""
    return airflow_env_factory(EXAMPLES)
