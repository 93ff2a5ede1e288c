"""The ``checkmate`` command: list, show, cancel, reset, clean and unlock managed CheckMate tasks."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from airflow_checkmate.checkmate import settings
from airflow_checkmate.checkmate.exceptions import TaskEngineException
from airflow_checkmate.checkmate.factory import allowed_patterns
from airflow_checkmate.checkmate.io.base import TaskIO
from airflow_checkmate.checkmate.registry import SORT_KEYS, TaskRecord, TaskRegistry, now
from airflow_checkmate.checkmate.service import ERRORS, CheckMateService, Outcome, TaskDetails, TaskNotFound
from airflow_checkmate.checkmate.status import StageStatus

EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
EPILOG = """\
Storage and registry come from --base-url/--database-url, else the Airflow connection (--conn-id,
default checkmate_default), else CHECKMATE_BASE_URL/CHECKMATE_DATABASE_URL, else files and SQLite under
$AIRFLOW_HOME/checkmate (~/.checkmate without AIRFLOW_HOME). Exit codes: 0 done, 1 refused or failed,
2 bad arguments, 3 unknown task id."""


def parse_age(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w``."""
    match = _AGE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 30m, 12h, 7d or 2w")
    return dt.timedelta(**{_UNITS[match[2]]: float(match[1])})


def parse_since(text: str) -> dt.datetime:
    """An age (``12h``: that long ago) or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return now() - parse_age(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an age (12h, 7d) nor an ISO time") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", help="only tasks of this queue")
    parser.add_argument("--status", action="append", choices=[s.value for s in StageStatus], help="repeatable")
    parser.add_argument("--tag", action="append", help="only tasks with this tag (repeatable: all must match)")
    parser.add_argument("--since", type=parse_since, help="updated since: an age (12h, 7d) or an ISO time")
    parser.add_argument("--limit", type=int, default=100, help="at most this many tasks (default 100)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="checkmate", description="Inspect and manage CheckMate tasks.", epilog=EPILOG, formatter_class=_Formatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) to stderr")
    parser.add_argument("--conn-id", default=settings.DEFAULT_CONN_ID, help="Airflow connection (type checkmate)")
    parser.add_argument("--base-url", help="stage state storage URL (overrides the connection)")
    parser.add_argument("--database-url", help="registry database URL (overrides the connection)")
    parser.add_argument(
        "--allow-factory",
        action="append",
        default=[],
        metavar="PATTERN",
        help=f"allow rebuilding tasks from factories matching PATTERN (adds to {settings.ENV_ALLOWED_FACTORIES})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = commands.add_parser("list", help="list tasks, newest first", formatter_class=_Formatter)
    _filters(ls)
    ls.add_argument("--sort", default="-updated_at", help=f"one of {', '.join(SORT_KEYS)}; prefix - to reverse")
    ls.add_argument("--include-cleaned", action="store_true", help="also tasks whose state was cleaned")
    ls.add_argument("--json", action="store_true", help="print JSON")

    show = commands.add_parser("show", help="a task's row, lock holder and stages", formatter_class=_Formatter)
    show.add_argument("task_id")
    show.add_argument("--dump", action="store_true", help="full stage state (rebuilds the task: allow-list)")
    show.add_argument("--json", action="store_true", help="print JSON")

    cancel = commands.add_parser(
        "cancel",
        help="cancel tasks (dry run unless --no-dry-run)",
        description="A task held by a live process is asked to stop at its next stage boundary, where it runs "
        "the stage's cancel(); any other task is rebuilt (allow-list) and canceled here.",
        formatter_class=_Formatter,
    )
    cancel.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    _filters(cancel)
    cancel.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=True, help="only report")
    cancel.add_argument("--reason", default="", help="recorded in the task's history")
    cancel.add_argument("--json", action="store_true", help="print JSON")

    reset = commands.add_parser(
        "reset", help="make an ERROR/CANCELED task runnable, or restart from a stage", formatter_class=_Formatter
    )
    reset.add_argument("task_id")
    reset.add_argument("--stage", help="restart from this stage (it and every later stage start over)")

    clean = commands.add_parser(
        "clean",
        help="remove stored state of finished tasks (dry run unless --no-dry-run)",
        description="Removes the stored stage state of COMPLETE and CANCELED tasks; their rows stay, marked cleaned.",
        formatter_class=_Formatter,
    )
    clean.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    clean.add_argument("--older-than", type=parse_age, help="only tasks not updated for this long (7d, 12h)")
    clean.add_argument("--queue", help="only tasks of this queue")
    clean.add_argument("--tag", action="append", help="only tasks with this tag (repeatable)")
    clean.add_argument(
        "--status", action="append", choices=["COMPLETE", "CANCELED", "ERROR"], help="default: COMPLETE, CANCELED"
    )
    clean.add_argument("--limit", type=int, default=1000, help="at most this many tasks (default 1000)")
    clean.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=True, help="only report")
    clean.add_argument("--json", action="store_true", help="print JSON")

    unlock = commands.add_parser("unlock", help="show a task's lock holder; break the lock with --force")
    unlock.add_argument("task_id")
    unlock.add_argument("--force", action="store_true", help="break the lock (the old holder's writes are refused)")
    return parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def make_service(args: argparse.Namespace) -> CheckMateService:
    """The service over the configured storage and registry (flags, connection, environment, default)."""
    base_url, database_url, options = args.base_url, args.database_url, {}
    if not (base_url and database_url):
        os.environ.setdefault("_AIRFLOW_PROCESS_CONTEXT", "server")  # let the Task SDK read the metadata DB
        resolved = settings.resolve(args.conn_id)
        base_url, database_url, options = (
            base_url or resolved.base_url,
            database_url or resolved.database_url,
            resolved.options,
        )
    return CheckMateService(
        TaskRegistry(database_url), TaskIO.from_base_url(base_url, **options), allowed_patterns() + args.allow_factory
    )


def _configure_logging(verbose: bool) -> None:
    """Logs to stderr (warnings, or everything with -v), so stdout holds only the command's output."""
    with contextlib.suppress(ImportError), contextlib.redirect_stdout(sys.stderr):
        import airflow.sdk  # noqa: F401  (importing Airflow configures logging; ours must come after it)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return _run(args)
    except BrokenPipeError:  # `checkmate list | head`
        sys.stderr.close()
        return 0
    except TaskNotFound as exc:
        print(f"checkmate: error: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except ERRORS as exc:
        print(f"checkmate: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def _run(args: argparse.Namespace) -> int:
    from airflow_checkmate import cli_output as out

    with contextlib.redirect_stdout(sys.stderr):  # Airflow's logger prints to stdout: keep stdout for output
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
        outcomes = service.clean(records, args.dry_run, *([statuses] if statuses else []))
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
    query = _query(args)
    if not any(query[k] for k in ("queue", "statuses", "tags", "since")):
        raise TaskEngineException("name TASK_IDs or give a filter (--queue, --status, --tag, --since)")
    return service.registry.list_tasks(**query, sort="updated_at")


if __name__ == "__main__":
    sys.exit(main())
