"""CheckMateHook: an Airflow connection of type ``checkmate`` turned into real CheckMate file storage.

How connections resolve here. ``CheckMateHook.get_connection`` is the Task SDK's ``BaseHook.get_connection``
-> ``Connection.get`` -> ``airflow.sdk.execution_time.context._get_connection``. In Airflow 3.3.2 that
asks ``supervisor.ensure_secrets_backend_loaded()`` for the backends, which picks one of three chains:
the task-runner chain (``task_runner.SUPERVISOR_COMMS`` is set: the execution API), the server chain
(``_AIRFLOW_PROCESS_CONTEXT=server``: includes the metastore) or, in any other process - a plain pytest
process - the fallback chain: ``EnvironmentVariablesBackend`` (plus any ``[secrets] backend`` configured).
That backend reads ``os.environ`` at every lookup and the SDK's ``SecretCache`` is off unless
``[secrets] use_cache`` is set, so ``monkeypatch.setenv("AIRFLOW_CONN_<ID>", json)`` is all a test needs:
no database, no supervisor. The ``airflow_home`` fixture removes ``_AIRFLOW_PROCESS_CONTEXT`` so that a
surrounding server context cannot route lookups to a metastore.
"""

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException
from airflow.sdk.log import redact

from airflow_checkmate.checkmate import TaskIOFile
from airflow_checkmate.checkmate.io import base as io_base
from airflow_checkmate.hooks.checkmate import CheckMateHook, default_home
from support.stored_objects import get_object


class UserinfoTaskIOFile(TaskIOFile):
    """File storage addressed as ``userfile://user:password@/abs/path`` (a URL that carries a password)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        path = base_url.split("@", 1)[1]
        super().__init__(path, **kwargs)


@pytest.fixture(autouse=True)
def airflow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private AIRFLOW_HOME and no server process context: connections come from env vars only."""
    home = tmp_path / "airflow_home"
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
    for name in list(os.environ):
        if name.startswith("AIRFLOW_CONN_CHECKMATE"):
            monkeypatch.delenv(name)
    return home


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, extra: dict[str, Any]) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "checkmate", "extra": extra}))


def test_hook_class_attributes() -> None:
    assert CheckMateHook.conn_type == "checkmate"
    assert CheckMateHook.default_conn_name == "checkmate_default"
    assert CheckMateHook.conn_name_attr == "checkmate_conn_id"
    assert CheckMateHook.hook_name == "CheckMate"
    hook = CheckMateHook()
    assert getattr(hook, CheckMateHook.conn_name_attr) == "checkmate_default"
    assert CheckMateHook("other").checkmate_conn_id == "other"


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "plain-path"])
def test_connection_from_env_var_gives_file_storage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, as_url: bool
) -> None:
    store = tmp_path / "store"
    set_conn(monkeypatch, "cm_files", {"base_url": f"file://{store}" if as_url else str(store)})
    hook = CheckMateHook("cm_files")
    io = hook.get_conn()
    assert isinstance(io, TaskIOFile)
    assert io.base == store.resolve()
    assert io.lease_seconds == io_base.DEFAULT_LEASE_SECONDS
    assert io.durable is True
    io.write("t1/task.json", '{"a": 1}')
    assert get_object(store, "t1/task.json") == b'{"a": 1}'
    assert hook.io is io


@pytest.mark.parametrize(
    ("lease", "durable", "want_lease", "want_durable"),
    [(7, False, 7.0, False), ("12.5", "false", 12.5, False), (3, "true", 3.0, True), (45, True, 45.0, True)],
)
def test_lease_seconds_and_durable_are_honoured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lease: Any, durable: Any, want_lease: float, want_durable: bool
) -> None:
    set_conn(monkeypatch, "cm_opts", {"base_url": str(tmp_path / "s"), "lease_seconds": lease, "durable": durable})
    io = CheckMateHook("cm_opts").io
    assert isinstance(io, TaskIOFile)
    assert io.lease_seconds == want_lease
    assert io.durable is want_durable


def test_durable_null_means_the_default_not_false(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The declared conn-field schema allows null for "durable" (a form field left empty): that must keep
    # fsync on (the documented default), like a missing key, never silently turn it off.
    set_conn(monkeypatch, "cm_null", {"base_url": str(tmp_path / "s"), "durable": None, "lease_seconds": None})
    io = CheckMateHook("cm_null").io
    assert isinstance(io, TaskIOFile)
    assert io.durable is True
    assert io.lease_seconds == io_base.DEFAULT_LEASE_SECONDS


@pytest.mark.parametrize("lease", [0, -5, "abc"])
def test_bad_lease_seconds_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lease: Any) -> None:
    # A lease of 0 must be refused like -5 (the conn-field schema says minimum 1), not replaced by 30.
    set_conn(monkeypatch, "cm_lease", {"base_url": str(tmp_path / "s"), "lease_seconds": lease})
    with pytest.raises(AirflowException, match="cm_lease"):
        CheckMateHook("cm_lease").get_conn()


def test_missing_default_connection_falls_back_to_airflow_home(airflow_home: Path) -> None:
    hook = CheckMateHook()
    io = hook.io
    assert isinstance(io, TaskIOFile)
    assert default_home() == airflow_home / "checkmate"
    assert io.base == (airflow_home / "checkmate" / "state").resolve()
    assert io.base.is_dir()
    assert hook.settings.base_url == str(airflow_home / "checkmate" / "state")
    assert hook.settings.database_url == f"sqlite:///{airflow_home / 'checkmate' / 'registry.db'}"
    assert hook.settings.source == "default"


def test_defined_default_connection_wins_over_the_embedded_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, airflow_home: Path
) -> None:
    set_conn(monkeypatch, "checkmate_default", {"base_url": str(tmp_path / "mine")})
    io = CheckMateHook().io
    assert isinstance(io, TaskIOFile)
    assert io.base == (tmp_path / "mine").resolve()
    assert not (airflow_home / "checkmate").exists()


def test_missing_other_connection_raises_naming_it(airflow_home: Path) -> None:
    with pytest.raises(AirflowNotFoundException, match=r"'cm_nowhere' is not defined") as info:
        CheckMateHook("cm_nowhere").get_conn()
    assert "checkmate" in str(info.value)
    assert not (airflow_home / "checkmate").exists(), "no fallback storage may be created for a wrong conn id"


def test_connection_without_base_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, "cm_empty", {"lease_seconds": 10})
    with pytest.raises(AirflowException, match=r"'cm_empty' has no base_url"):
        CheckMateHook("cm_empty").get_conn()


def test_bad_url_scheme_is_a_clear_error_naming_connection_and_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, "cm_ftp", {"base_url": "ftp://example.org/state"})
    with pytest.raises(AirflowException, match=r"'cm_ftp'") as info:
        CheckMateHook("cm_ftp").get_conn()
    assert "'ftp'" in str(info.value)
    assert "file://" in str(info.value), "the message should say which schemes are supported"


@pytest.mark.parametrize(
    ("conn_id", "extra", "where"),
    [
        ("cm_nowhere", None, "io"),
        ("cm_empty", {"lease_seconds": 10}, "io"),
        ("cm_ftp", {"base_url": "ftp://example.org/state"}, "io"),
        ("cm_lease", {"base_url": "/tmp/x", "lease_seconds": "soon"}, "io"),
        ("cm_mysql", {"base_url": "/tmp/x", "database_url": "mysql://db/x"}, "registry"),
    ],
)
def test_configuration_errors_fail_without_retry(
    monkeypatch: pytest.MonkeyPatch, conn_id: str, extra: dict[str, Any] | None, where: str
) -> None:
    """A setting no retry can fix raises AirflowFailException, so the task fails at once."""
    if extra is not None:
        set_conn(monkeypatch, conn_id, extra)
    with pytest.raises(AirflowFailException, match=rf"'{conn_id}'"):
        getattr(CheckMateHook(conn_id), where)


def test_a_database_that_does_not_answer_is_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A refused connection may work on a later try: a plain AirflowException, not AirflowFailException."""
    set_conn(monkeypatch, "cm_down", {"base_url": str(tmp_path), "database_url": "postgresql://cm@127.0.0.1:1/x"})
    with pytest.raises(AirflowException, match=r"'cm_down'") as info:
        _ = CheckMateHook("cm_down").registry
    assert not isinstance(info.value, AirflowFailException)


def test_test_connection_true_on_a_writable_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = tmp_path / "store"
    set_conn(monkeypatch, "cm_ok", {"base_url": f"file://{store}"})
    ok, message = CheckMateHook("cm_ok").test_connection()
    assert ok is True, message
    assert str(store) in message
    assert list(store.iterdir()) == [], "the probe must leave nothing behind"


def test_test_connection_false_when_base_url_points_into_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    regular = tmp_path / "regular-file"
    regular.write_text("not a folder")
    set_conn(monkeypatch, "cm_bad", {"base_url": str(regular / "state")})
    ok, message = CheckMateHook("cm_bad").test_connection()
    assert ok is False
    assert "cm_bad" in message and str(regular) in message
    assert regular.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_test_connection_false_on_a_read_only_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = tmp_path / "ro"
    store.mkdir()
    store.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        set_conn(monkeypatch, "cm_ro", {"base_url": str(store)})
        ok, message = CheckMateHook("cm_ro").test_connection()
    finally:
        store.chmod(stat.S_IRWXU)
    assert ok is False
    assert message


def test_test_connection_false_for_an_undefined_connection() -> None:
    ok, message = CheckMateHook("cm_undefined").test_connection()
    assert ok is False
    assert "cm_undefined" in message


def test_password_in_url_base_url_is_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(io_base.BACKENDS, "userfile", f"{__name__}:UserinfoTaskIOFile")
    password = f"pw-{uuid.uuid4().hex}"
    assert redact(f"x {password} y") == f"x {password} y", "precondition: not masked yet"
    store = tmp_path / "store"
    set_conn(monkeypatch, "cm_secret", {"base_url": f"userfile://alice:{password}@{store}"})
    io = CheckMateHook("cm_secret").io
    assert isinstance(io, UserinfoTaskIOFile)
    assert io.base == store.resolve()
    assert redact(f"x {password} y") == "x *** y"


def test_password_masked_even_when_the_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    set_conn(monkeypatch, "cm_dav", {"base_url": f"webdav://user:{password}@files.example/prefix"})
    with pytest.raises(AirflowException, match=r"'cm_dav'.*'webdav'") as info:
        CheckMateHook("cm_dav").get_conn()
    assert password not in redact(str(info.value)), "the error text must be masked when it is logged"
