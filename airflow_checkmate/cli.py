"""The ``checkmate`` command: list, show, cancel, reset, clean and unlock managed CheckMate tasks."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_checkmate.checkmate import settings
from airflow_checkmate.checkmate.factory import allowed_patterns
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.registry import TaskRecord, TaskRegistry, now
from airflow_checkmate.checkmate.service import ERRORS, FINISHED, CheckMateService, Outcome, TaskDetails, TaskNotFound
from airflow_checkmate.checkmate.sqldb import safe_url
from airflow_checkmate.checkmate.status import StageStatus
from airflow_checkmate.cli_parser import parse_args

EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3
_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^@\s/]+@")  # the password of a URL in an error message
_ORIGINS = {
    "default": "the embedded default on this machine",
    "environment": f"{settings.ENV_BASE_URL}/{settings.ENV_DATABASE_URL}",
}


def make_service(args: argparse.Namespace) -> CheckMateService:
    """The service over the configured storage and registry (flags, connection, environment, default)."""
    base_url, database_url, options = args.base_url, args.database_url, {}
    source = ""
    if _needs_airflow(args):
        if _metadata_db_exists():  # connections defined in Airflow's metadata DB count too
            os.environ.setdefault("_AIRFLOW_PROCESS_CONTEXT", "server")
        resolved = settings.resolve(args.conn_id)
        base_url, database_url, options = (
            base_url or resolved.base_url,
            database_url or resolved.database_url,
            resolved.options,
        )
        source = resolved.source
    if args.storage_conn_id:
        options = {**options, "conn_id": args.storage_conn_id}
    io = TaskIO.from_base_url(base_url, **options)
    if source:  # one line, so a user sees which store a command acts on when they did not name it
        origin = _ORIGINS.get(source, f"the Airflow {source}")
        print(f"checkmate: storage {io.base_url}, registry {safe_url(database_url)} (from {origin})", file=sys.stderr)
    return CheckMateService(TaskRegistry(database_url), io, allowed_patterns() + args.allow_factory)


def _metadata_db_exists() -> bool:
    """False only when Airflow's metadata DB is a SQLite file that does not exist (then a lookup would create it)."""
    try:
        from airflow.configuration import conf
    except ImportError:
        return False
    url = conf.get("database", "sql_alchemy_conn", fallback="") or ""
    if not url.startswith("sqlite:///"):
        return bool(url)
    return Path(url[len("sqlite:///") :].split("?", 1)[0]).exists()


def _needs_airflow(args: argparse.Namespace) -> bool:
    """Only a setting not given as a flag is looked up through Airflow; explicit URLs never import it."""
    return not (args.base_url and args.database_url)


def _configure_logging(verbose: bool, with_airflow: bool) -> None:
    """Logs to stderr (warnings, or everything with -v), so stdout holds only the command's output."""
    if with_airflow:
        with contextlib.suppress(ImportError), contextlib.redirect_stdout(sys.stderr):
            import airflow.sdk  # noqa: F401  (importing Airflow configures logging; ours must come after it)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(argv) if argv is not None else None)
    _configure_logging(args.verbose, _needs_airflow(args))
    try:
        return _run(args)
    except BrokenPipeError:  # `checkmate list | head`
        sys.stderr.close()
        return 0
    except TaskNotFound as exc:
        return _error(exc, EXIT_NOT_FOUND)
    except settings.ConfigurationError as exc:  # an unknown --conn-id, a connection without base_url
        return _error(exc, EXIT_USAGE)
    except ERRORS as exc:
        return _error(exc, EXIT_REFUSED)


def _error(exc: BaseException, code: int) -> int:
    """One line on stderr, never a traceback: drivers' messages span lines, and the URL in them is masked."""
    text = _PASSWORD.sub(r"\1***@", " ".join(str(exc).split()))
    print(f"checkmate: error: {text}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    from airflow_checkmate import cli_output as out

    # Airflow's logger prints to stdout: keep stdout for the output (and its INFO lines for -v)
    with contextlib.redirect_stdout(sys.stderr if args.verbose else open(os.devnull, "w")):
        service = make_service(args)
    command = args.command
    if command == "list":
        records = service.registry.list_tasks(**_query(args), sort=args.sort, include_cleaned=args.include_cleaned)
        out.print_records(records, args.json)
        return 0
    if command == "show":
        details: TaskDetails = service.show(args.task_id)
        dump = service.dump(args.task_id) if args.dump else None
        out.print_details(details, dump, args.json)
        return 0
    if command == "reset":
        return out.print_outcomes([service.reset(args.task_id, args.stage)], False)
    if command == "unlock":
        outcome = service.unlock(args.task_id, args.force)
        out.print_outcomes([outcome], False)
        return 0 if outcome.done or outcome.message == "not locked" else EXIT_REFUSED
    records = _select(service, args)
    outcomes: list[Outcome]
    if command == "cancel":
        outcomes = service.cancel([r.task_id for r in records], args.dry_run, args.reason)
    else:
        statuses = [StageStatus(s) for s in args.status] if args.status else None
        outcomes = service.clean(records, args.dry_run, statuses or FINISHED, force=args.force)
    return out.print_outcomes(outcomes, args.json)


def _query(args: argparse.Namespace) -> dict[str, Any]:
    statuses = [StageStatus(s) for s in args.status or ()]
    return {"queue": args.queue, "statuses": statuses, "tags": args.tag, "since": args.since, "limit": args.limit}


def _select(service: CheckMateService, args: argparse.Namespace) -> list[TaskRecord]:
    """The tasks a batch command acts on: the ids given (each must exist), else the filters."""
    if args.task_ids:
        return [service.record(task_id) for task_id in args.task_ids]
    if args.command == "clean":
        statuses = [StageStatus(s) for s in args.status or ("COMPLETE", "CANCELED")]
        before = now() - args.older_than if args.older_than else None
        return service.registry.list_tasks(
            queue=args.queue, statuses=statuses, tags=args.tag, before=before, limit=args.limit, sort="updated_at"
        )
    return service.registry.list_tasks(**_query(args), sort="updated_at")


if __name__ == "__main__":
    sys.exit(main())
