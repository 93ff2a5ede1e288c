"""The ``checkmate`` command's arguments: every subcommand, its filters, and ages like ``7d``."""

from __future__ import annotations

import argparse
import datetime as dt
import re

from airflow_checkmate.checkmate import settings
from airflow_checkmate.checkmate.exceptions import TaskEngineException
from airflow_checkmate.checkmate.registry import SORT_KEYS, dag_tag, now
from airflow_checkmate.checkmate.status import StageStatus

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
STATUSES = [s.value for s in StageStatus if s is not StageStatus.UNBOUND]
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _configuration(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Where storage and registry are, and the allow-list: accepted before or after the subcommand."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("-v", "--verbose", action="store_true", default=default(False), help="log INFO to stderr")
    parser.add_argument("--conn-id", default=default(settings.DEFAULT_CONN_ID), help="Airflow connection")
    parser.add_argument("--base-url", default=default(None), help="stage state storage URL (overrides the connection)")
    parser.add_argument("--database-url", default=default(None), help="registry database URL (overrides it too)")
    parser.add_argument(
        "--storage-conn-id",
        default=default(None),
        help="with an s3:// --base-url: the connection with its keys",
    )
    parser.add_argument(
        "--allow-factory",
        action="append",
        default=default([]),
        metavar="PATTERN",
        help=f"allow rebuilding tasks from factories matching PATTERN (adds to {settings.ENV_ALLOWED_FACTORIES})",
    )


def _filters(parser: argparse.ArgumentParser, statuses: list[str], limit: int) -> None:
    parser.add_argument("--queue", help="only tasks of this queue")
    parser.add_argument(
        "--status", action="append", choices=statuses, metavar="STATUS", help=f"only these statuses: {statuses}"
    )
    parser.add_argument("--tag", action="append", help="only tasks with this tag (repeatable: all must match)")
    parser.add_argument("--dag", metavar="DAG_ID", help="only tasks of this Airflow DAG (its tag dag:DAG_ID)")
    parser.add_argument("--limit", type=positive_int, default=limit, help="at most this many tasks")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _configuration(common, suppress=True)
    parser = argparse.ArgumentParser(
        prog="checkmate", description="Inspect and manage CheckMate tasks.", epilog=EPILOG, formatter_class=_Formatter
    )
    _configuration(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=description or help, parents=[common], formatter_class=_Formatter
        )

    sorts = [*SORT_KEYS, *(f"-{key}" for key in SORT_KEYS)]
    ls = command("list", "list tasks, most recently updated first")
    _filters(ls, STATUSES, 100)
    ls.add_argument("--since", type=parse_since, help="updated since: an age (12h, 7d) or an ISO time")
    ls.add_argument("--sort", default="-updated_at", choices=sorts, metavar="KEY", help=f"one of {sorts}")
    ls.add_argument("--include-cleaned", action="store_true", help="also tasks whose state was cleaned")
    ls.add_argument("--json", action="store_true", help="print JSON")

    show = command("show", "a task's row, lock holder and stages")
    show.add_argument("task_id", metavar="TASK_ID")
    show.add_argument("--dump", action="store_true", help="full stage state (rebuilds the task: see --allow-factory)")
    show.add_argument("--json", action="store_true", help="print JSON")

    cancel = command(
        "cancel",
        "cancel tasks (a dry run unless --no-dry-run)",
        "Cancel the named tasks, or those matching the filters. A task held by a live process is asked to "
        "stop at its next stage boundary, where it runs the stage's cancel(); any other task is rebuilt "
        "(see --allow-factory) and canceled here.",
    )
    cancel.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="tasks to cancel (or give filters)")
    _filters(cancel, ["CREATED", "RUNNING", "RETRY"], 100)
    cancel.add_argument("--since", type=parse_since, help="updated since: an age (12h, 7d) or an ISO time")
    cancel.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=True, help="only report")
    cancel.add_argument("--reason", default="", help="recorded in the task's history")
    cancel.add_argument("--json", action="store_true", help="print JSON")

    reset = command(
        "reset",
        "make an ERROR/CANCELED task runnable again, or restart any task from a stage",
        "Rewrite the task's stored statuses; needs no factory and imports nothing. Without --stage the "
        "ERROR/CANCELED stage becomes RETRY. With --stage, that stage and every later one restart from their "
        "templates when the task next runs (COMPLETE stages before it are kept), and the task's definition "
        "from that stage on is taken from the next run: the way out after a DAG edit.",
    )
    reset.add_argument("task_id", metavar="TASK_ID")
    reset.add_argument("--stage", help="restart from this stage (it and every later stage start over)")

    clean = command(
        "clean",
        "remove the stored state of finished tasks (a dry run unless --no-dry-run)",
        "Remove the stored stage state of the named tasks, or of those matching the filters (by default "
        "COMPLETE and CANCELED ones); their registry rows stay, marked cleaned.",
    )
    clean.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="tasks to clean (or give filters)")
    _filters(clean, ["COMPLETE", "CANCELED", "ERROR"], 1000)
    clean.add_argument("--older-than", type=parse_age, help="only tasks not updated for this long (7d, 12h)")
    clean.add_argument(
        "--force",
        action="store_true",
        help="the named TASK_IDs whatever their status (RETRY, ERROR...), even if their state no longer parses",
    )
    clean.add_argument("--dry-run", action=argparse.BooleanOptionalAction, default=True, help="only report")
    clean.add_argument("--json", action="store_true", help="print JSON")

    unlock = command("unlock", "show a task's lock holder; break the lock with --force")
    unlock.add_argument("task_id", metavar="TASK_ID")
    unlock.add_argument("--force", action="store_true", help="break the lock (the old holder's writes are refused)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the combination: a batch command takes TASK_IDs or filters, not both, not neither."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "dag", None) is not None:  # the operator tags its tasks dag:<dag_id>: a tag filter
        try:
            args.tag = [*(args.tag or ()), dag_tag(args.dag)]
        except TaskEngineException as exc:
            parser.error(f"--dag: {exc}")
    if args.command in ("cancel", "clean"):
        filters = [args.queue, args.status, args.tag, getattr(args, "since", None), getattr(args, "older_than", None)]
        if args.task_ids and any(filters):
            parser.error(f"{args.command}: give TASK_IDs or filters, not both")
        if args.command == "clean" and args.force and not args.task_ids:
            parser.error("clean --force: name the TASK_IDs (it does not take filters)")
        if args.command == "cancel" and not args.task_ids and not any(filters):
            parser.error("cancel: name TASK_IDs or give a filter (--queue, --status, --tag, --dag, --since)")
    return args
