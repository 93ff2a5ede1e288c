"""Campaign 5: the hostile-input catalogue — every bad input tried, the exception it gets, and proof nothing changed.

Why: the contract's quality bar is "bad input gets a clear, named exception and loses nothing already
stored". Each case of :mod:`reliability.hostile_catalogue` (the same definitions
``tests/checkmate/test_bad_input.py`` asserts on) runs in its own sandbox store, in which a task was
stored first where the case needs one. A case is a violation when:

- it raises nothing (the bad input was accepted), or an exception type the contract does not name
  for it (a raw ``OSError``, ``KeyError``, ``json`` error...);
- anything under the sandbox changed: every file and folder, bytes and mode, is compared before and
  after (the store sits three folders deep, so an id escaping the base would show too);
- the contract says it is refused before any storage call, and a storage call was made;
- the stored task does not resume and finish with the right result afterwards.

The table is grouped by category, with the exception class and the start of its message.
``python -m reliability.hostile --help`` for options.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from reliability.hostile_catalogue import HostileCase, catalogue
from reliability.hostile_store import make_stored_task, new_store, resume_and_finish, snapshot
from reliability.report import Report

COLUMNS = ("category", "case", "exception", "message (start)", "stored unchanged")


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    """Run in ``path``, so a URL or id that turns into a relative folder lands inside the snapshot."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def excerpt(exc: BaseException, *paths: Path, width: int = 100) -> str:
    """The start of the message on one line; pydantic's: the field and its first error only."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        text = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    else:
        text = " ".join(str(exc).split())
    for path in paths:
        text = text.replace(f"{path}/", "").replace(str(path), "<store>")
    return text if len(text) <= width else text[: width - 3] + "..."


def run_case(report: Report, case: HostileCase, workdir: Path) -> None:
    """Run one case in a new sandbox under ``workdir``; add its row and any violation to ``report``."""
    label = f"{case.category} {case.case_id}"
    st = new_store(Path(tempfile.mkdtemp(prefix="hostile-", dir=workdir)))
    if case.stored:
        make_stored_task(st)
    undo = case.plant(st) if case.plant else None
    st.io.calls.clear()
    before = snapshot(st.root)
    error: BaseException | None = None
    with _cwd(st.root):
        try:
            case.action(st)
        except Exception as exc:
            error = exc
    after = snapshot(st.root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if error is None:
        report.violation(f"{label}: accepted, no exception")
    elif not isinstance(error, case.expect):
        names = "/".join(t.__name__ for t in case.expect)
        report.violation(f"{label}: {type(error).__name__} ({excerpt(error, width=200)}), expected {names}")
    report.check(not changed, f"{label}: stored files changed: {changed[:5]}")
    report.check(
        not (case.before_storage and st.io.calls),
        f"{label}: storage was called before the refusal: {st.io.calls[:3]}",
    )
    resumed = ""
    if case.stored:
        if undo is not None:
            undo()
        try:
            resume_and_finish(st)
        except Exception as exc:  # an AssertionError names what was lost
            resumed = f"; resume FAILED: {type(exc).__name__}"
            report.violation(f"{label}: the stored task did not resume intact: {type(exc).__name__}: {exc}")
    kind = type(error).__name__ if error is not None else "(none)"
    message = excerpt(error, st.base) if error is not None else ""
    report.row(case.category, case.case_id, kind, message, ("yes" if not changed else "NO") + resumed)


def run(cases: list[HostileCase], workdir: Path) -> Report:
    report = Report(f"Hostile input: {len(cases)} bad inputs, the exception each gets, storage unchanged", COLUMNS)
    order = list(dict.fromkeys(c.category for c in cases))
    for case in sorted(cases, key=lambda c: order.index(c.category)):
        run_case(report, case, workdir)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--category", nargs="*", default=None, help="only these categories (default: all)")
    parser.add_argument("--list", action="store_true", help="list the categories and case counts, run nothing")
    args = parser.parse_args(argv)
    logging.getLogger("airflow_checkmate").setLevel(logging.ERROR)  # the stored task's planned failure warns
    cases = catalogue()
    if args.list:
        for category in dict.fromkeys(c.category for c in cases):
            print(f"{sum(c.category == category for c in cases):4d}  {category}")
        return 0
    if args.category:
        cases = [c for c in cases if c.category in args.category]
    with tempfile.TemporaryDirectory(prefix="checkmate-hostile-") as tmp:
        return run(cases, Path(tmp)).finish()


if __name__ == "__main__":
    sys.exit(main())
