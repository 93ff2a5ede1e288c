"""``python -m reliability`` (``make reliability``): every campaign at full size, one after another.

Each campaign prints its table; the exit code is non-zero when any campaign found a violation or failed.
A campaign's own module runs it alone with its options: ``python -m reliability.kill --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

CAMPAIGNS = ("kill", "kill_journal", "race", "zombie", "faults", "hostile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reliability", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "campaigns", nargs="*", metavar="CAMPAIGN", help=f"some of {', '.join(CAMPAIGNS)} (default: all)"
    )
    args = parser.parse_args(argv)
    names = args.campaigns or list(CAMPAIGNS)
    unknown = sorted(set(names) - set(CAMPAIGNS))
    if unknown:
        print(f"unknown campaign(s) {unknown}; choose from {list(CAMPAIGNS)}", file=sys.stderr)
        return 2
    results: list[tuple[str, int, float]] = []
    for name in names:
        print(f"\n=== reliability.{name} ===", flush=True)
        begin = time.monotonic()
        code = importlib.import_module(f"reliability.{name}").main([])
        results.append((name, code, time.monotonic() - begin))
    print("\n=== summary ===")
    for name, code, seconds in results:
        print(f"{name:<8} {'ok' if code == 0 else 'VIOLATIONS'}  {seconds:7.1f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
