"""One ``airflow dags test`` run of a test DAG and everything it left behind: output per try, journals, state."""

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_checkmate.operators.checkmate import derive_checkmate_task_id
from support.airflow_env import AirflowEnv
from support.stages import read_journal
from support.stored_objects import get_object


@dataclass
class Run:
    """One ``airflow dags test`` run and everything it left behind."""

    env: AirflowEnv
    out: Path
    dag_id: str
    proc: subprocess.CompletedProcess[str]
    run_id: str

    @property
    def output(self) -> str:
        return self.proc.stdout

    def tail(self) -> str:
        return self.output[-8000:]

    def journal(self, task_id: str, dag_id: str | None = None) -> list[list[str]]:
        return read_journal(self.out / f"{dag_id or self.dag_id}.{task_id}.journal")

    def runs_of(self, task_id: str, verb: str = "start") -> list[str]:
        """The stage names in the order their ``verb`` lines were journaled (``start``, ``cancel``...)."""
        return [words[1] for words in self.journal(task_id) if words[0] == verb]

    def tries(self, task_id: str) -> list[str]:
        """The output of each time ``dags test`` ran the task (a try, a reschedule, a resumed deferral)."""
        pattern = (
            rf"\[DAG TEST\] starting task_id={re.escape(task_id)} .*?"
            rf"\[DAG TEST\] end task task_id={re.escape(task_id)} "
        )
        return re.findall(pattern, self.output, flags=re.DOTALL)

    def log(self, task_id: str) -> str:
        return "\n".join(self.tries(task_id))

    def checkmate_id(self, task_id: str) -> str:
        return derive_checkmate_task_id(self.dag_id, task_id, self.run_id)

    def stage(self, checkmate_task_id: str, stage_name: str) -> dict[str, Any]:
        raw = get_object(self.env.state_dir, f"{checkmate_task_id}/{stage_name}.stage.json")
        assert raw is not None, f"nothing stored for stage {stage_name} of {checkmate_task_id}\n{self.tail()}"
        return json.loads(raw)  # type: ignore[no-any-return]


def dags_test(env: AirflowEnv, out: Path, dag_id: str, *args: str) -> Run:
    proc = env.run("dags", "test", dag_id, *args, extra_env={"CHECKMATE_E2E_DIR": str(out)})
    found = re.findall(rf"DagRun Finished: dag_id={re.escape(dag_id)}, .*?run_id=([^,\s]+),", proc.stdout)
    assert found, f"airflow dags test {dag_id} did not finish a run:\n{proc.stdout[-8000:]}"
    return Run(env, out, dag_id, proc, found[-1])
