"""The ``checkmate_factory`` of a managed task: stored as a dotted path, imported only if allow-listed.

Tools (``checkmate cancel``, ``reset``) rebuild a task from its registry row to run stage code such as
``cancel()``. The path comes from a database, so it is imported only when it matches a pattern of the
allow-list setting (``CHECKMATE_ALLOWED_FACTORIES``, comma-separated ``fnmatch`` patterns such as
``mycompany.tasks.*``). Nothing else read from storage or the registry is ever imported.
"""

import fnmatch
import importlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from airflow_checkmate.checkmate.exceptions import TaskEngineException
from airflow_checkmate.checkmate.settings import ENV_ALLOWED_FACTORIES

log = logging.getLogger(__name__)

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def factory_path(factory: Callable[..., Any] | str | None) -> str | None:
    """The dotted path a factory can be imported by, or None if it has none (a lambda, a local function)."""
    if factory is None:
        return None
    if isinstance(factory, str):
        if not _DOTTED.fullmatch(factory):
            raise TaskEngineException(f"checkmate_factory {factory[:120]!r} is not a dotted path like pkg.module.func")
        return factory
    if not callable(factory):
        raise TaskEngineException(f"checkmate_factory must be a callable or its dotted path, got {factory!r}")
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    path = f"{module}.{qualname}"
    if module and module.startswith("unusual_prefix_"):
        log.info("checkmate_factory %s is defined in a DAG file: tools cannot import it to rebuild the task", qualname)
        return None
    if not module or module == "__main__" or not _DOTTED.fullmatch(path):
        log.warning(
            "checkmate_factory %s has no importable path (define it at module level in an importable module): "
            "`checkmate cancel` and `reset` will not be able to rebuild this task",
            path,
        )
        return None
    return path


def allowed_patterns() -> list[str]:
    """The allow-list setting: patterns from CHECKMATE_ALLOWED_FACTORIES (empty: nothing is allowed)."""
    return [p.strip() for p in os.environ.get(ENV_ALLOWED_FACTORIES, "").split(",") if p.strip()]


def load_factory(path: str, allowed: Sequence[str] | None = None) -> Callable[..., Any]:
    """Import the factory at ``path``, only if it matches a pattern of ``allowed`` (default: the setting)."""
    patterns = allowed_patterns() if allowed is None else list(allowed)
    if not isinstance(path, str) or not _DOTTED.fullmatch(path):
        raise TaskEngineException(f"stored checkmate_factory {str(path)[:120]!r} is not a dotted path; not imported")
    if not any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns):
        raise TaskEngineException(
            f"checkmate_factory {path!r} is not in the allow-list, so it was not imported. Allow it with "
            f"{ENV_ALLOWED_FACTORIES}={path} (comma-separated patterns such as 'mycompany.tasks.*')"
        )
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        try:
            for name in parts[split:]:
                obj = getattr(obj, name)
        except AttributeError:
            break
        if callable(obj):
            return obj  # type: ignore[no-any-return]
        break
    raise TaskEngineException(f"checkmate_factory {path!r} cannot be imported here (is its package installed?)")
