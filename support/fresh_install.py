"""Install the built wheel into fresh virtualenvs, as a new user would, and time each install.

Each case is timed twice: pip's resolution alone (``--dry-run``), then the install itself (downloads,
unpacking, byte-compiling Airflow's thousands of modules).

``python -m support.fresh_install`` (what ``make install-check`` runs) builds the wheel, then for
each case makes a new virtualenv and runs a plain ``pip install`` with no constraints file: the package
with ``[s3]``, with ``[postgres]``, alone, and alone on the declared minimum Airflow (``==`` the floor in
pyproject.toml). Each venv then imports every provider module. It needs the package index, so it is
not part of ``make test``; pip's own cache is used as a user's would be (``--no-cache`` to skip it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from support.processes import ROOT

LIMIT_SECONDS = 180.0
#: imports every provider module and reads the provider info, as Airflow's ProvidersManager does
IMPORT_ALL = (
    "import importlib, pkgutil, airflow, airflow_checkmate, airflow_provider_checkmate;"
    "from airflow_checkmate.get_provider_info import get_provider_info;"
    "mods = [m.name for m in pkgutil.walk_packages(airflow_checkmate.__path__, 'airflow_checkmate.')];"
    "[importlib.import_module(m) for m in mods];"
    "print(airflow.__version__, len(mods), get_provider_info()['versions'][0])"
)


@dataclass(frozen=True)
class Outcome:
    case: str
    resolve_seconds: float
    seconds: float
    returncode: int
    airflow: str
    output: str


def airflow_floor() -> str:
    """The lowest Airflow the package declares (``apache-airflow>=X``), as written in pyproject.toml."""
    match = re.search(r'^\s*"apache-airflow>=([0-9.]+)[,"]', (ROOT / "pyproject.toml").read_text(), re.M)
    if not match:
        raise SystemExit("no 'apache-airflow>=X' in pyproject.toml dependencies")
    return match.group(1)


def user_env(no_cache: bool) -> dict[str, str]:
    """The environment of a user's shell: no constraints file, no project variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_CONSTRAINT", "VIRTUAL_ENV", "PYTHON"))}
    env["PIP_CONSTRAINT"] = ""  # a site-wide pip.conf constraint would not be on a user's machine
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if no_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    return env


def build_wheel(out: Path, env: dict[str, str]) -> Path:
    """The wheel of a clean copy of the tree (an in-tree build would leave build/ behind, and reuse it)."""
    source = out.parent / "source"
    junk = (".git", ".venv", "build", "*.egg-info", ".demo", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*junk))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(out)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("airflow_provider_checkmate-*.whl")
    return wheel


def _timed_pip(python: str, args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """``pip install -q ARGS`` in a venv, and how long it took."""
    started = time.monotonic()
    proc = subprocess.run(
        [python, "-m", "pip", "install", "-q", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=LIMIT_SECONDS * 3,
        check=False,
    )
    return proc, time.monotonic() - started


def install(case: str, requirements: list[str], workdir: Path, env: dict[str, str]) -> Outcome:
    """A new venv, one ``pip install`` timed, then every provider module imported in it."""
    venv = workdir / f"venv-{case}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # resolution alone first: where pip used to backtrack for 15 minutes and more
    dry, resolve_seconds = _timed_pip(python, ["--dry-run", *requirements], env)
    if dry.returncode != 0:
        return Outcome(case, resolve_seconds, 0.0, dry.returncode, "-", dry.stdout[-2000:] + dry.stderr[-2000:])
    proc, seconds = _timed_pip(python, requirements, env)
    if proc.returncode != 0:
        return Outcome(case, resolve_seconds, seconds, proc.returncode, "-", proc.stdout[-2000:] + proc.stderr[-2000:])
    check = subprocess.run([python, "-c", IMPORT_ALL], env=env, capture_output=True, text=True, check=False)
    version = check.stdout.split()[0] if check.returncode == 0 else "-"
    return Outcome(case, resolve_seconds, seconds, check.returncode, version, check.stdout + check.stderr[-3000:])


def run(cases: list[str], no_cache: bool) -> list[Outcome]:
    env = user_env(no_cache)
    with tempfile.TemporaryDirectory(prefix="checkmate-install-") as tmp:
        workdir = Path(tmp)
        wheel = build_wheel(workdir / "dist", env)
        plans = {
            "s3": [f"{wheel}[s3]"],
            "postgres": [f"{wheel}[postgres]"],
            "plain": [str(wheel)],
            "airflow-floor": [str(wheel), f"apache-airflow=={airflow_floor()}"],
        }
        return [install(case, plans[case], workdir, env) for case in cases]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.fresh_install", description=__doc__)
    parser.add_argument("cases", nargs="*", default=["s3", "postgres", "plain", "airflow-floor"])
    parser.add_argument("--no-cache", action="store_true", help="download everything (pip --no-cache-dir)")
    args = parser.parse_args(argv)
    outcomes = run(args.cases, args.no_cache)
    print(f"{'case':<14} {'resolve s':>9} {'install s':>9}  {'airflow':<8} result")
    failed = False
    for o in outcomes:
        ok = o.returncode == 0 and o.seconds < LIMIT_SECONDS
        failed |= not ok
        verdict = "ok" if ok else ("over the limit" if o.returncode == 0 else "FAILED")
        print(f"{o.case:<14} {o.resolve_seconds:>9.1f} {o.seconds:>9.1f}  {o.airflow:<8} {verdict}")
        if o.returncode != 0:
            print(o.output, file=sys.stderr)
    load = os.getloadavg()[0]
    print(f"limit per install: {LIMIT_SECONDS:.0f} s; python {sys.version.split()[0]}; load average {load:.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
