"""`make demo`: run the example DAG checkmate_etl_resume in real Airflow and show the task resuming.

The DAG is dags_examples/checkmate_etl_resume.py (shipped in the package as its example_dags).

Uses a throw-away AIRFLOW_HOME under .demo/airflow with the embedded default (SQLite metadata DB,
CheckMate state as local files). The DAG's transform stage fails once: Airflow retries the task and
CheckMate resumes at transform, skipping extract. The Airflow log is kept in .demo/airflow/dags-test.log.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / ".demo" / "airflow"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
SHOW = re.compile(r"^(bound task|stage \d+/\d+|Resuming at|\|)")
STATE = re.compile(r"Task instance state updated.*new_state=(up_for_retry|success|failed)")


def main() -> int:
    shutil.rmtree(HOME, ignore_errors=True)
    HOME.mkdir(parents=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    }
    print(f"== airflow db migrate (AIRFLOW_HOME={HOME.relative_to(ROOT)}, SQLite)")
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    print("== airflow dags test checkmate_etl_resume   (transform fails once; Airflow retries the task)\n")
    proc = subprocess.run(
        [AIRFLOW, "dags", "test", "checkmate_etl_resume"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    log = HOME / "dags-test.log"
    log.write_text(proc.stdout)
    tries = 0
    for line in proc.stdout.splitlines():
        text = re.sub(r"^\S+Z \[\w+\s*\] ", "", line)
        text = re.sub(r"\s+\[[\w.]+\]( \w+=\S+)*\s*$", "", text).strip()
        if text.startswith("bound task"):
            tries += 1
            print(f"\n-- Airflow try {tries}")
        if SHOW.search(text):
            print("   " + text[:160])
        elif match := STATE.search(line):
            print(f"   => Airflow marks try {tries} {match.group(1)}")
    state = HOME / "checkmate" / "state"
    print(f"\n== DAG run {'succeeded' if proc.returncode == 0 else 'FAILED'}; stage state in {state.relative_to(ROOT)}")
    print(f"   full Airflow log: {log.relative_to(ROOT)}")
    print(f"\n== checkmate list   (the task registry, {(HOME / 'checkmate' / 'registry.db').relative_to(ROOT)})\n")
    listing = subprocess.run(
        [str(Path(sys.executable).with_name("checkmate")), "list"], env=env, capture_output=True, text=True, check=False
    )
    print("\n".join("   " + line for line in (listing.stdout or listing.stderr).splitlines()))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
