"""CheckMate engine demo: a three-stage task fails at stage 2, is run again in a new process, resumes.

Run with ``make demo``. The first process completes stage 1 and fails in stage 2 (a planned, one-time
failure). The second process binds the same task id, skips stage 1 (its code does not run again) and
resumes at stage 2. The state lives under ``.demo/`` as JSON files.
"""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import Field

from airflow_checkmate.checkmate import BaseStage, BaseStageState, CheckMateEngine, RetryPolicy, TaskIO

STORE = Path(__file__).resolve().parent.parent / ".demo" / "state"
TASK_ID = "demo-etl"


class EtlState(BaseStageState[dict[str, int]]):
    rows: list[int] = Field(default_factory=list)


class Extract(BaseStage[EtlState]):
    def execute_stage(self, previous_state_copy: EtlState) -> None:
        print("    extract: running (reads 5 rows)")
        self.state.rows = [3, 1, 4, 1, 5]


class Transform(BaseStage[EtlState]):
    def execute_stage(self, previous_state_copy: EtlState) -> None:
        marker = STORE.parent / "transform-failed-once"
        if not marker.exists():
            marker.touch()
            print("    transform: running... and failing (the database went away)")
            raise ConnectionError("database went away")
        print("    transform: running (squares the rows)")
        self.state.rows = [r * r for r in previous_state_copy.rows]


class Load(BaseStage[EtlState]):
    def execute_stage(self, previous_state_copy: EtlState) -> None:
        print("    load: running (writes the total)")
        self.state.result = {"rows": len(previous_state_copy.rows), "total": sum(previous_state_copy.rows)}


def run_once() -> int:
    """One process's try: bind, execute from the first incomplete stage, unbind."""
    stages = [
        Extract(stage_name="extract", state=EtlState(), description="read the source"),
        Transform(stage_name="transform", state=EtlState(), description="square every row"),
        Load(stage_name="load", state=EtlState(), description="write the result"),
    ]
    engine: CheckMateEngine[BaseStage[EtlState], dict[str, int]] = CheckMateEngine(
        TaskIO.from_base_url(str(STORE)), TASK_ID, stages, RetryPolicy.RETRY, max_attempts=3
    )
    with engine:
        done = [s.stage_name for s in engine.stages if s.state.status.value == "COMPLETE"]
        print(f"    bound {TASK_ID}: status {engine.status}, already complete: {done or 'none'}")
        try:
            engine.execute(strict_recovery=True)
        except Exception as exc:
            print(f"    execute raised: {exc}")
            print(f"    task status is now {engine.status}; stage state is saved")
            return 1
        print(f"    task {engine.status}, result {engine.task_result}")
        print()
        print(engine.dump_stages(basenames_only=True))
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        logging.basicConfig(level=logging.WARNING, format="    [log] %(message)s")
        return run_once()
    shutil.rmtree(STORE.parent, ignore_errors=True)
    STORE.mkdir(parents=True)
    for attempt in (1, 2):
        print(f"\n== process {attempt}: python {Path(__file__).name} --run")
        code = subprocess.call([sys.executable, __file__, "--run"])
        print(f"== process {attempt} exited with {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
