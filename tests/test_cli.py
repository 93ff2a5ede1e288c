"""The ``checkmate`` command, run for real in child processes: output, exit codes, and what it changes.

Tasks are made in this process with ``support.managed_tasks`` (file storage and a SQLite registry in
the test's folder); the command runs as ``python -m airflow_checkmate.cli`` with the repository first on
PYTHONPATH, so a copy of the repository tests its own code. Each run imports Airflow (about 2 s), so
independent runs go in parallel and a test checks several things per run. "Nothing changed" is checked
against a byte snapshot of the storage folder, the registry rows and the stage journal.
"""

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_checkmate.checkmate import (
    CheckMate,
    TaskIO,
    TaskRegistry,
    read_snapshot,
)
from airflow_checkmate.checkmate.lease import HOST
from support.cli_site import ALLOW, CLI, SCRIPT, S, Site, clean_env, conn_json, explain, run_all
from support.managed_tasks import events, make, make_stages
from support.processes import S3_CONN_ID, start_python
from support.stored_objects import get_object


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """A fresh storage folder, registry and AIRFLOW_HOME in the test's folder."""
    return Site(tmp_path)


def test_help_of_the_command_and_every_subcommand(site: Site) -> None:
    """``--help`` exits 0 and names every option, for the command (also the installed script) and each subcommand."""
    expected = {
        (): [
            *("--verbose", "--conn-id", "--base-url", "--database-url", "--allow-factory", "Exit codes"),
            *("list", "show", "cancel", "reset", "clean", "unlock", "CHECKMATE_BASE_URL", "AIRFLOW_HOME"),
        ],
        ("list",): ["--queue", "--status", "--tag", "--since", "--limit", "--sort", "--include-cleaned", "--json"],
        ("show",): ["TASK_ID", "--dump", "--json"],
        ("cancel",): [
            *("TASK_ID", "--queue", "--status", "--tag", "--since", "--limit", "--dry-run", "--no-dry-run"),
            *("--reason", "--json"),
        ],
        ("reset",): ["TASK_ID", "--stage"],
        ("clean",): [
            *("TASK_ID", "--older-than", "--queue", "--tag", "--status", "--limit", "--dry-run", "--no-dry-run"),
            "--json",
        ],
        ("unlock",): ["TASK_ID", "--force"],
    }
    for sub in [k for k in expected if k]:  # the configuration options work after the subcommand too
        expected[sub] += ["--conn-id", "--base-url", "--database-url", "--allow-factory"]
    env = clean_env(site.home)
    results = run_all([([*sub, "--help"], env) for sub in expected])
    if SCRIPT.exists():  # the installed console script (it imports the installed package)
        results += run_all([(["--help"], env)], command=[str(SCRIPT)])
    for result in results:
        sub = tuple(a for a in result.args if a not in ("--help", *CLI, str(SCRIPT)))
        assert result.returncode == 0, explain(result)
        assert result.stdout.startswith(f"usage: checkmate {' '.join(sub)}".rstrip()), explain(result)
        for option in expected[sub]:
            assert option in result.stdout, f"{option} missing from checkmate {' '.join(sub)} --help"
    assert not (site.home / "checkmate").exists()  # --help touches no storage


def test_list_table_json_and_filters(site: Site) -> None:
    """The table for people; ``--json`` is pure JSON on stdout (logs on stderr, even with -v); filters apply."""
    assert site.task("done", queue="etl", tags=["team:data"]) is S.COMPLETE
    time.sleep(0.01)
    assert site.task("retry", fail=True, queue="ml", tags=["team:data", "env:prod"]) is S.RETRY
    table, as_json, filtered, no_match, by_id, nothing = site.run(
        ["list"],
        ["-v", "list", "--json"],
        ["list", "--json", "--status", "RETRY", "--status", "ERROR", "--queue", "ml", "--tag", "env:prod"],
        ["list", "--json", "--tag", "team:data", "--tag", "nope"],
        ["list", "--json", "--sort", "task_id", "--since", "1h"],
        ["list", "--queue", "nope"],
    )
    for result in (table, as_json, filtered, no_match, by_id, nothing):
        assert result.returncode == 0, explain(result)
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["TASK_ID", "STATUS", "DONE", "CURRENT"] and "LOCK HOLDER" in lines[0]
    assert lines[1].split()[:6] == ["retry", "RETRY", "1/3", "b", "ml", "env:prod,team:data"]
    assert lines[2].split()[:5] == ["done", "COMPLETE", "3/3", "etl", "team:data"] and len(lines) == 3
    records = json.loads(as_json.stdout)
    assert [r["task_id"] for r in records] == ["retry", "done"]
    assert records[0]["status"] == "RETRY" and records[0]["tags"] == ["env:prod", "team:data"]
    assert records[0]["checkmate_factory"] == "support.managed_tasks.make" and records[0]["lock_holder"] is None
    assert records[1]["stages_done"] == records[1]["stages_total"] == 3 and records[1]["cleaned"] is False
    assert records[1]["updated_at"].endswith(("Z", "+00:00"))
    assert [r["task_id"] for r in json.loads(filtered.stdout)] == ["retry"]
    assert json.loads(no_match.stdout) == []
    assert [r["task_id"] for r in json.loads(by_id.stdout)] == ["done", "retry"]
    assert nothing.stdout.strip() == "no tasks match"


def test_show_dump_and_unlock_while_this_process_holds_the_task(site: Site) -> None:
    """show names the stages and the live holder; --dump needs the allow-list; unlock refuses, then --force."""
    assert site.task("held", fail=True, description="nightly load") is S.RETRY
    engine = make("held", **site.kw(description="nightly load"))
    engine.bind()
    lock = site.store / "held" / "task.lock"
    try:
        token = json.loads(lock.read_text())["token"]
        show, as_json, dump, refused_dump, unlock = site.run_each(
            (["show", "held"], {}),
            (["show", "held", "--json"], {}),
            (["show", "held", "--dump"], {"CHECKMATE_ALLOWED_FACTORIES": "support.*"}),
            (["show", "held", "--dump"], {}),
            (["unlock", "held"], {}),
        )
        for result in (show, as_json, dump):
            assert result.returncode == 0, explain(result)
        fields = dict(line.split(":", 1) for line in show.stdout.split("\n\n")[0].splitlines())
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        assert fields["status"] == "RETRY (stored)" and fields["description"] == "nightly load"
        assert fields["factory"] == "support.managed_tasks.make" and fields["cleaned"] == "no"
        assert fields["lock"].startswith(f"host {HOST} pid {os.getpid()}") and fields["lock"].endswith("[live]")
        stages = [line.split()[:4] for line in show.stdout.split("\n\n")[1].splitlines()]
        assert stages == [
            ["#", "STAGE", "STATUS", "ATTEMPTS"],
            ["1/3", "a", "COMPLETE", "1"],
            ["2/3", "b", "RETRY", "1"],
            ["3/3", "c", "CREATED", "0"],
        ]
        assert "planned failure of b" in show.stdout
        details = json.loads(as_json.stdout)
        assert details["record"]["task_id"] == "held" and details["stored"]["status"] == "RETRY"
        assert details["lease"]["pid"] == os.getpid() and details["holder_state"] == "live"
        assert details["dump"] is None
        assert "# Task `held`" in dump.stdout and "## Stage 2/3: b — RETRY" in dump.stdout
        # Without the allow-list nothing is imported: the stored JSON is shown, saying why
        assert refused_dump.returncode == 0, explain(refused_dump)
        assert "# Task `held` (stored JSON)" in refused_dump.stdout and "## Stage 2/3: b — RETRY" in refused_dump.stdout
        assert "not in the allow-list" in refused_dump.stdout and "CHECKMATE_ALLOWED_FACTORIES" in refused_dump.stdout
        assert unlock.returncode == 1, explain(unlock)
        assert f"host {HOST} pid {os.getpid()}" in unlock.stdout and "--force" in unlock.stdout
        assert json.loads(lock.read_text())["token"] == token
        assert site.row("held").lock_holder is not None

        (forced,) = site.run(["unlock", "held", "--force"])
        assert forced.returncode == 0 and "lock broken" in forced.stdout, explain(forced)
        assert not lock.exists() and site.row("held").lock_holder is None
    finally:
        engine.unbind()
    (not_locked,) = site.run(["unlock", "held"])
    assert not_locked.returncode == 0 and "not locked" in not_locked.stdout, explain(not_locked)


def test_cancel_is_a_dry_run_by_default_then_cancels(site: Site) -> None:
    """Dry runs (by id or by filter) change no byte; --no-dry-run cancels, running cancel() once per task."""
    assert site.task("r1", fail=True) is S.RETRY
    assert site.task("r2", fail=True, queue="ml") is S.RETRY
    assert site.task("done") is S.COMPLETE
    before = site.snapshot()
    by_id, by_status, by_queue = site.run(
        [*ALLOW, "cancel", "r1"], [*ALLOW, "cancel", "--status", "RETRY", "--json"], ["cancel", "--queue", "etl"]
    )
    assert site.snapshot() == before
    for result in (by_id, by_status, by_queue):
        assert result.returncode == 0, explain(result)
    assert by_id.stdout.splitlines()[1].split()[:2] == ["r1", "cancel"] and "dry run: would rebuild it" in by_id.stdout
    outcomes = json.loads(by_status.stdout)
    assert [(o["task_id"], o["done"]) for o in outcomes] == [("r1", False), ("r2", False)]
    assert all(o["message"].startswith("dry run") for o in outcomes)
    assert "r1" in by_queue.stdout and "r2" not in by_queue.stdout and "skipped: it is COMPLETE" in by_queue.stdout

    (real,) = site.run([*ALLOW, "cancel", "r1", "--no-dry-run", "--json"])
    assert real.returncode == 0, explain(real)
    (outcome,) = json.loads(real.stdout)
    assert outcome["task_id"] == "r1" and outcome["done"] and "canceled at stage 'b'" in outcome["message"]
    assert events(site.journal, "cancel") == ["cancel b"]
    assert site.status("r1") is S.CANCELED and site.row("r1").status is S.CANCELED
    assert site.status("r2") is S.RETRY and site.status("done") is S.COMPLETE

    (by_filter,) = site.run([*ALLOW, "cancel", "--status", "RETRY", "--no-dry-run"])
    assert by_filter.returncode == 0 and "r2" in by_filter.stdout and "r1" not in by_filter.stdout, explain(by_filter)
    assert events(site.journal, "cancel") == ["cancel b", "cancel b"]
    assert site.status("r2") is S.CANCELED and site.row("r2").status is S.CANCELED


def test_unknown_task_id_exits_3_and_changes_nothing(site: Site) -> None:
    """An unknown id is named, exits 3, and nothing is done, not even to the valid ids given with it."""
    assert site.task("good", fail=True) is S.RETRY
    assert site.task("done") is S.COMPLETE
    before = site.snapshot()
    results = site.run(
        [*ALLOW, "cancel", "good", "nope", "--no-dry-run"],
        [*ALLOW, "cancel", "nope", "--no-dry-run"],
        ["clean", "done", "nope", "--no-dry-run"],
        ["show", "nope"],
        [*ALLOW, "reset", "nope"],
        ["unlock", "nope", "--force"],
    )
    for result in results:
        assert result.returncode == 3, explain(result)
        assert "no task 'nope' in the registry" in result.stderr and "checkmate list" in result.stderr, explain(result)
        assert "Traceback" not in result.stderr and "good" not in result.stdout + result.stderr
    assert site.snapshot() == before
    assert events(site.journal, "cancel") == [] and site.status("good") is S.RETRY


def test_bad_arguments_fail_clearly_and_change_nothing(site: Site) -> None:
    """Unknown status, bad age, bad sort, bad limit, cancel without ids or filters: non-zero exit, a clear message."""
    assert site.task("good", fail=True) is S.RETRY
    assert site.task("done") is S.COMPLETE
    before = site.snapshot()
    cases: list[tuple[list[str], int, str]] = [
        (["list", "--status", "BOGUS"], 2, "invalid choice: 'BOGUS'"),
        ([*ALLOW, "cancel", "--status", "BOGUS", "--no-dry-run"], 2, "invalid choice: 'BOGUS'"),
        (["clean", "--older-than", "7x", "--no-dry-run"], 2, "'7x' is not an age like 30m, 12h, 7d or 2w"),
        (["clean", "--status", "RETRY", "--no-dry-run"], 2, "invalid choice: 'RETRY'"),
        (["list", "--since", "yesterday"], 2, "'yesterday' is neither an age (12h, 7d) nor an ISO time"),
        ([*ALLOW, "cancel", "--queue", "etl", "--no-dry-run", "--limit", "many"], 2, "'many' is not a positive"),
        ([], 2, "required: COMMAND"),
        (["list", "--sort", "bogus"], 2, "argument --sort: invalid choice: 'bogus'"),
        (["list", "--limit", "0"], 2, "'0' is not a positive whole number"),
        ([*ALLOW, "cancel", "--no-dry-run"], 2, "give a filter (--queue, --status, --tag, --dag, --since)"),
        ([*ALLOW, "cancel", "good", "--status", "RETRY", "--no-dry-run"], 2, "give TASK_IDs or filters, not both"),
        (["clean", "done", "--older-than", "7d", "--no-dry-run"], 2, "give TASK_IDs or filters, not both"),
        (["cancel", "good", "--no-dry-run", "--allow-factory"], 2, "expected one argument"),
        (["clean", "done", "--older-than", "7 days", "--no-dry-run"], 2, "'7 days' is not an age"),
    ]
    results = site.run(*(args for args, _, _ in cases))
    for (_, code, message), result in zip(cases, results, strict=True):
        assert result.returncode == code, explain(result)
        assert message in result.stderr and result.stdout == "", explain(result)
        assert "Traceback" not in result.stderr, explain(result)
    assert site.snapshot() == before


def test_configuration_and_storage_errors_are_one_line_and_an_exit_code(site: Site) -> None:
    """An unknown --conn-id exits 2; a database that refuses connections exits 1 naming it, password masked."""
    home = site.tmp / "errors_home"
    refused = "postgresql://cm:s3cret@127.0.0.1:1/none"
    unknown_conn, unreachable, bad_scheme, conn_without_url = run_all(
        [
            (["--conn-id", "cm_undefined", "list"], clean_env(home)),
            (["--base-url", str(site.store), "--database-url", refused, "list"], clean_env(home)),
            (["--base-url", "ftp://cm:s3cret@files.example/x", "--database-url", site.db, "list"], clean_env(home)),
            (["--conn-id", "cm_empty", "list"], clean_env(home, AIRFLOW_CONN_CM_EMPTY='{"conn_type": "checkmate"}')),
        ]
    )
    for result in (unknown_conn, unreachable, bad_scheme, conn_without_url):
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1, explain(result)
        assert result.stderr.startswith("checkmate: error: ") and "Traceback" not in result.stderr, explain(result)
        assert "s3cret" not in result.stderr, explain(result)
    assert unknown_conn.returncode == 2 and "'cm_undefined' is not defined" in unknown_conn.stderr, explain(
        unknown_conn
    )
    assert unreachable.returncode == 1, explain(unreachable)
    assert "postgresql+psycopg://cm:***@127.0.0.1:1/none" in unreachable.stderr, explain(unreachable)
    assert bad_scheme.returncode == 1 and "'ftp://cm:***@files.example/x'" in bad_scheme.stderr, explain(bad_scheme)
    assert conn_without_url.returncode == 2 and "'cm_empty' has no base_url" in conn_without_url.stderr
    assert not (home / "airflow.db").exists()


def test_cancel_dry_run_says_what_the_real_run_does(site: Site) -> None:
    """Without the factory allowed, the dry run and the real run both leave a request, not a cancel here."""
    assert site.task("r1", fail=True) is S.RETRY
    assert site.task("r2", fail=True) is S.RETRY
    (dry, allowed_dry) = site.run(["cancel", "r1"], [*ALLOW, "cancel", "r2"])
    assert dry.returncode == 0, explain(dry)
    assert "dry run: would request a cancel; it takes effect, running cancel(), when the task next runs" in dry.stdout
    assert "not in the allow-list" in dry.stdout, explain(dry)
    assert "dry run: would rebuild it with support.managed_tasks." in allowed_dry.stdout, explain(allowed_dry)
    assert "cancel it here and run its cancel()" in allowed_dry.stdout, explain(allowed_dry)

    (real, allowed_real) = site.run(["cancel", "r1", "--no-dry-run"], [*ALLOW, "cancel", "r2", "--no-dry-run"])
    assert "cancel requested; it takes effect, running cancel(), when the task next runs" in real.stdout, explain(real)
    assert site.status("r1") is S.RETRY and events(site.journal, "cancel") == ["cancel b"]
    assert "canceled at stage 'b'; its cancel() ran" in allowed_real.stdout, explain(allowed_real)
    assert site.status("r2") is S.CANCELED


def test_clean_and_reset(site: Site) -> None:
    """clean: dry run by default, --older-than, then COMPLETE state removed with the row marked; reset ERROR."""
    assert site.task("done") is S.COMPLETE
    assert site.task("failed", fail=True, max_attempts=1) is S.ERROR
    before = site.snapshot()
    dry, too_young = site.run(["clean"], ["clean", "--older-than", "1h", "--no-dry-run"])
    assert dry.returncode == 0 and "done" in dry.stdout and "dry run: would remove" in dry.stdout, explain(dry)
    assert "failed" not in dry.stdout
    assert too_young.returncode == 0 and too_young.stdout.strip() == "no tasks match", explain(too_young)
    assert site.snapshot() == before

    (real,) = site.run(["clean", "--no-dry-run", "--json"])
    assert real.returncode == 0, explain(real)
    assert [(o["task_id"], o["done"]) for o in json.loads(real.stdout)] == [("done", True)]
    assert not (site.store / "done").exists() and get_object(site.store, "failed/task.json") is not None
    listed, with_cleaned, reset = site.run(
        ["list", "--json"], ["list", "--include-cleaned"], [*ALLOW, "reset", "failed"]
    )
    assert [r["task_id"] for r in json.loads(listed.stdout)] == ["failed"], explain(listed)
    row = next(line for line in with_cleaned.stdout.splitlines() if line.startswith("done "))
    assert row.split()[1:3] == ["COMPLETE", "(cleaned)"], explain(with_cleaned)
    assert reset.returncode == 0 and "the task is RETRY" in reset.stdout, explain(reset)
    assert site.status("failed") is S.RETRY and site.row("failed").status is S.RETRY
    assert site.task("failed", max_attempts=1) is S.COMPLETE
    done_runs, failed_runs = ["start a", "start b", "start c"], ["start a", "start b", "start b", "start c"]
    assert events(site.journal, "start") == done_runs + failed_runs


def test_settings_resolution_order(site: Site) -> None:
    """Flags, then the Airflow connection, then CHECKMATE_* variables, then $AIRFLOW_HOME/checkmate."""
    homes = [site.tmp / f"home{i}" for i in range(3)]
    stores = {
        "from-conn": (site.tmp / "conn_store", f"sqlite:///{site.tmp / 'conn.db'}"),
        "from-env": (site.tmp / "env_store", f"sqlite:///{site.tmp / 'env.db'}"),
    }
    for task_id, (store, db) in stores.items():
        with make(task_id, journal=str(site.journal), base_url=str(store), database_url=db):
            pass
    for home in homes:  # the embedded default of each home holds a task of its own
        default_db = f"sqlite:///{home / 'checkmate' / 'registry.db'}"
        with make("from-default", base_url=str(home / "checkmate" / "state"), database_url=default_db):
            pass
    conn_store, conn_db = stores["from-conn"]
    env_store, env_db = stores["from-env"]
    env_vars = {"CHECKMATE_BASE_URL": str(env_store), "CHECKMATE_DATABASE_URL": env_db}
    both = {**env_vars, "AIRFLOW_CONN_CHECKMATE_DEFAULT": conn_json(str(conn_store), conn_db)}
    partial = {**env_vars, "AIRFLOW_CONN_CHECKMATE_DEFAULT": conn_json(str(conn_store))}
    runs = [
        (homes[0], both, []),
        (homes[1], env_vars, []),
        (homes[2], {}, []),
        (homes[0], both, ["--base-url", str(env_store), "--database-url", env_db]),
        (homes[1], partial, []),  # the connection has no database_url: the variable gives it
    ]
    results = run_all([([*flags, "list", "--json"], clean_env(home, **env)) for home, env, flags in runs])
    for result in results:
        assert result.returncode == 0, explain(result)
    listed = [[r["task_id"] for r in json.loads(result.stdout)] for result in results]
    assert listed == [["from-conn"], ["from-env"], ["from-default"], ["from-env"], ["from-env"]]
    origins = [r.stderr.rpartition("(from ")[2].strip() for r in results]
    assert origins == [
        "the Airflow connection checkmate_default)",
        "CHECKMATE_BASE_URL/CHECKMATE_DATABASE_URL)",
        "the embedded default on this machine)",
        "",  # both given on the command line: nothing to say
        "the Airflow connection checkmate_default)",
    ], [r.stderr for r in results]


def test_options_after_the_subcommand_quiet_output_and_no_airflow_db(site: Site) -> None:
    """Configuration options work after the subcommand; no INFO without -v; a lookup creates no airflow.db."""
    assert site.task("good", fail=True) is S.RETRY
    home = site.tmp / "quiet_home"
    flags = ["--base-url", str(site.store), "--database-url", site.db]
    after, quiet, verbose = run_all(
        [
            (["show", "good", "--dump", *flags, *ALLOW], clean_env(home)),
            (["list"], clean_env(home)),
            (["-v", "list"], clean_env(home)),
        ]
    )
    assert after.returncode == 0 and "## Stage 2/3: b" in after.stdout, explain(after)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "no tasks match", explain(quiet)
    resolved = (  # the one line saying which storage and registry the command resolved, nothing else
        f"checkmate: storage file://{home / 'checkmate' / 'state'}, registry sqlite:///{home / 'checkmate'}"
        "/registry.db (from the embedded default on this machine)\n"
    )
    assert quiet.stderr == resolved and after.stderr == "", explain(quiet) + explain(after)
    assert verbose.returncode == 0 and "No connection 'checkmate_default'" in verbose.stderr, explain(verbose)
    assert not (home / "airflow.db").exists(), "a read-only command created Airflow's metadata DB"


@pytest.mark.slow
def test_cancel_a_task_running_in_another_process(postgres_url: str, tmp_path: Path) -> None:
    """On PostgreSQL: the CLI asks a running task to stop; it stops at the next boundary, cancel() runs once."""
    uid = uuid.uuid4().hex[:10]
    task_id, queue = f"running-{uid}", f"q-{uid}"
    journal = tmp_path / "journal.log"
    kw = {
        "journal": str(journal),
        "base_url": postgres_url,
        "database_url": postgres_url,
        "stages": ["a", "b", "c", "d"],
        "slow_stage": "b",
        "sleep_seconds": 60.0,
        "queue": queue,
    }
    child = start_python("-m", "support.managed_tasks", task_id, json.dumps(kw))
    try:
        deadline = time.monotonic() + 30
        while "start b" not in events(journal):
            assert child.poll() is None, f"the task ended early: {child.communicate()}"
            assert time.monotonic() < deadline, "stage b did not start within 30 s"
            time.sleep(0.05)
        registry = TaskRegistry(postgres_url)
        row = registry.get(task_id)
        assert row is not None and row.status is S.RUNNING and f"pid {child.pid}" in (row.lock_holder or "")
        flags = ["--base-url", postgres_url, "--database-url", postgres_url]
        env = clean_env(tmp_path / "airflow_home")
        started = time.monotonic()
        (cancel,) = run_all([([*flags, "cancel", task_id, "--no-dry-run"], env)])
        assert cancel.returncode == 0, explain(cancel)
        assert "cancel requested" in cancel.stdout and f"pid {child.pid}" in cancel.stdout, explain(cancel)
        out, err = child.communicate(timeout=30)
        assert time.monotonic() - started < 30  # stage b stopped sleeping: it saw the request
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 4 and out.startswith("CANCELED"), f"{out}\n{err}"
    # b saw the request and returned early: it ends CANCELED (not COMPLETE with partial work); its cleanup ran
    assert events(journal) == ["start a", "end a", "start b", "end b", "cancel b"]
    snapshot = read_snapshot(TaskIO.from_base_url(postgres_url), task_id)
    assert snapshot is not None and snapshot.status is S.CANCELED
    assert [s.status for s in snapshot.stages] == [S.COMPLETE, S.CANCELED, S.CANCELED, S.CANCELED]
    (listed,) = run_all([([*flags, "list", "--json", "--queue", queue], env)])
    assert listed.returncode == 0, explain(listed)
    (record,) = json.loads(listed.stdout)
    assert (record["task_id"], record["status"], record["lock_holder"]) == (task_id, "CANCELED", None)


@pytest.mark.slow
def test_show_and_clean_a_task_stored_on_s3(s3_url: str, tmp_path: Path) -> None:
    """--base-url s3://... with --storage-conn-id: the CLI reads and cleans state on the S3 server."""
    io = TaskIO.from_base_url(s3_url, conn_id=S3_CONN_ID)
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    task: CheckMate[Any, Any] = CheckMate(None, make_stages(), task_id="on-s3", io=io, registry=db)
    with task:
        task.execute()
    env = clean_env(tmp_path / "home", AIRFLOW_CONN_CHECKMATE_TEST_S3=os.environ["AIRFLOW_CONN_CHECKMATE_TEST_S3"])
    flags = ["--base-url", s3_url, "--storage-conn-id", S3_CONN_ID, "--database-url", db]
    (show,) = run_all([([*flags, "show", "on-s3"], env)])
    assert show.returncode == 0, explain(show)
    assert "COMPLETE (stored)" in show.stdout and s3_url in show.stdout, explain(show)
    assert [line.split()[1] for line in show.stdout.splitlines() if line.startswith(("1/3", "2/3", "3/3"))] == [
        "a",
        "b",
        "c",
    ]
    (clean,) = run_all([([*flags, "clean", "on-s3", "--no-dry-run"], env)])
    assert clean.returncode == 0 and "row marked cleaned" in clean.stdout, explain(clean)
    assert io.list("on-s3/") == []
