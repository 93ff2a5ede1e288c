"""Stage factories for the UI test DAGs (importable by path, so the UI can rebuild the tasks for reset)."""

import os

from support.stages import JournalStage, make_stages

JOURNAL_DIR_ENV = "CHECKMATE_UI_JOURNAL_DIR"


def _journal(dag_id: str) -> str:
    folder = os.environ.get(JOURNAL_DIR_ENV, "")
    return os.path.join(folder, f"{dag_id}.journal") if folder else ""


def resume_stages(dag_id: str) -> list[JournalStage]:
    """Three 1-second stages; s2 fails on its first run, so the task resumes at s2 on Airflow's second try."""
    return make_stages(3, _journal(dag_id), sleep_seconds=1.0, fail_first={"s2": 1})


def slow_stages(dag_id: str) -> list[JournalStage]:
    """Five 5-second stages: slow enough to watch the view refresh, cancel and unlock while it runs."""
    return make_stages(5, _journal(dag_id), sleep_seconds=5.0)
