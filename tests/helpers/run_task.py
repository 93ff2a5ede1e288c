"""Run a journal task in this process: ``python -m tests.helpers.run_task BASE TASK_ID STAGES [options]``.

Used by tests that resume, kill or race real processes. Prints the final status; exit codes:
0 COMPLETE, 3 RETRY (call again), 4 ERROR/CANCELED, 5 lock held by another process.
"""

import argparse
import json
import sys

from airflow_checkmate.checkmate import (
    BindException,
    CheckMateEngine,
    RetryPolicy,
    StageStatus,
    TaskEngineException,
    TaskIO,
)
from tests.helpers.stages import make_stages


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
    args = parser.parse_args(argv)

    options: dict[str, object] = {"conn_id": args.conn_id} if args.conn_id else {}
    io = TaskIO.from_base_url(args.base, lease_seconds=args.lease, durable=not args.no_durable, **options)
    stages = make_stages(args.stages, args.journal, args.sleep, json.loads(args.fail_first))
    policy = RetryPolicy.RETRY if args.max_attempts > 1 else RetryPolicy.NONE
    engine: CheckMateEngine = CheckMateEngine(  # type: ignore[type-arg]
        io, args.task_id, stages, policy, args.max_attempts, bind_lock_timeout=args.lock_timeout
    )
    try:
        with engine:
            try:
                engine.execute(strict_recovery=True)
            except TaskEngineException as exc:
                print(f"{engine.status} {exc}", flush=True)
                return 3 if engine.status is StageStatus.RETRY else 4
            except Exception as exc:
                print(f"{engine.status} {type(exc).__name__}: {exc}", flush=True)
                return 4
            print(f"{engine.status} {json.dumps(engine.task_result)}", flush=True)
            return 0
    except BindException as exc:
        print(f"LOCKED {exc}", flush=True)
        return 5


if __name__ == "__main__":
    sys.exit(main())
