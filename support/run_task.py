"""Run a journal task in this process: ``python -m support.run_task BASE TASK_ID STAGES [options]``.

Used by tests that resume, kill or race real processes. Prints the final status; exit codes:
0 COMPLETE, 3 RETRY (call again), 4 ERROR/CANCELED (and a lease lost while running: LeaseLostException), 5 lock
held by another process, 6 lease lost while releasing it (another process took the task over).
``--instance-key``/``--try-number`` set the lease claim as the operator does; ``--gil-chars`` makes a
stage hold the GIL in one long C call.

``--clean`` ends a COMPLETE run with ``unbind(clean=True)`` (the task's objects are removed), so that kill
campaigns can interrupt a cleanup. ``--phases`` appends phase lines to the journal, for campaigns that
must know where a run was when it was killed (the stage lines are unchanged):
``bound PID MONOTONIC STATUS TAKEOVER_PIDS`` (comma-separated, ``-`` for none), ``executed PID MONOTONIC``
and ``unbound PID MONOTONIC``.
"""

import argparse
import json
import os
import re
import sys
import time

from airflow_checkmate.checkmate import (
    BindException,
    CheckMateEngine,
    LeaseLostException,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIO,
)
from support.stages import journal, make_stages


def _takeover_pids(engine: CheckMateEngine) -> str:  # type: ignore[type-arg]
    """The pids of the holders the task's history says were taken over, for the ``bound`` phase line."""
    pids = []
    for event in engine.task_state.history:
        match = re.search(r"\bpid (\d+)\b", event.message) if event.event == "lock takeover" else None
        if match:
            pids.append(match.group(1))
    return ",".join(pids) or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("task_id")
    parser.add_argument("stages", type=int)
    parser.add_argument("--journal", default="")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fail-first", default="{}", help='JSON, e.g. {"s2": 1}')
    parser.add_argument("--max-attempts", type=int, default=1000)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--lock-timeout", type=float, default=None)
    parser.add_argument("--no-durable", action="store_true")
    parser.add_argument("--conn-id", default=None, help="Airflow connection of the store (s3://...)")
    parser.add_argument("--clean", action="store_true", help="unbind(clean=True) after a COMPLETE run")
    parser.add_argument("--phases", action="store_true", help="journal the bound/executed/unbound phases")
    parser.add_argument("--gil-chars", default="{}", help='JSON, e.g. {"s1": 25}: hold the GIL that long')
    parser.add_argument("--instance-key", default="", help="the lease claim's instance (as the operator sets)")
    parser.add_argument("--try-number", type=int, default=0)
    args = parser.parse_args(argv)

    def phase(line: str) -> None:
        if args.phases:
            journal(args.journal, f"{line.split()[0]} {os.getpid()} {time.monotonic():.6f} {line.partition(' ')[2]}")

    options: dict[str, object] = {"conn_id": args.conn_id} if args.conn_id else {}
    io = TaskIO.from_base_url(args.base, lease_seconds=args.lease, durable=not args.no_durable, **options)
    stages = make_stages(args.stages, args.journal, args.sleep, json.loads(args.fail_first), json.loads(args.gil_chars))
    policy = RetryPolicy.RETRY if args.max_attempts > 1 else RetryPolicy.NONE
    engine: CheckMateEngine = CheckMateEngine(  # type: ignore[type-arg]
        io, args.task_id, stages, policy, args.max_attempts, bind_lock_timeout=args.lock_timeout
    )
    engine.instance_key, engine.try_number = args.instance_key, args.try_number
    try:
        with engine:
            phase(f"bound {engine.status} {_takeover_pids(engine)}")
            try:
                engine.execute(strict_recovery=True)
            except TaskEngineException as exc:
                print(f"{engine.status} {exc}", flush=True)
                return 3 if engine.status is StageStatus.RETRY else 4
            except Exception as exc:
                print(f"{engine.status} {type(exc).__name__}: {exc}", flush=True)
                return 4
            print(f"{engine.status} {json.dumps(engine.task_result)}", flush=True)
            phase("executed")
            if args.clean:
                engine.unbind(clean=True)
        phase("unbound")
        return 0
    except LeaseLostException as exc:  # a BindException too, but not "held by another": ours was taken over
        print(f"LEASE_LOST {exc}", flush=True)
        return 6
    except BindException as exc:
        print(f"LOCKED {exc}", flush=True)
        return 5


if __name__ == "__main__":
    sys.exit(main())
