"""A real S3-compatible HTTP server on 127.0.0.1 for tests, campaigns and benchmarks: moto's, one request at a time.

``python -m support.s3_server PORT`` serves; ``running_s3_server(conn_id)`` starts one on a free port in
a child process, exports the Airflow connection ``conn_id`` pointing at it, and stops it on exit. moto enforces
``If-None-Match`` and ``If-Match`` on PutObject and DeleteObject (412 PreconditionFailed), which the S3 lease
relies on. Serving requests one at a time makes each conditional write atomic, as it is on S3 (moto's threaded
server checks and stores in two steps, which two threads could interleave).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from support.processes import ROOT

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@contextlib.contextmanager
def running_s3_server(conn_id: str) -> Iterator[str]:
    """Yield the endpoint of a new moto server; ``AIRFLOW_CONN_<CONN_ID>`` names it while it runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    conn_var = f"AIRFLOW_CONN_{conn_id.upper()}"
    saved = {k: os.environ.get(k) for k in (conn_var, "AWS_EC2_METADATA_DISABLED")}
    with tempfile.TemporaryFile() as log:  # a pipe nobody reads would fill and block the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "support.s3_server", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            _wait_until_it_answers(endpoint, proc, log)
            extra = {"endpoint_url": endpoint, "region_name": KEYS["region_name"]}
            conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
            os.environ[conn_var] = json.dumps(conn)
            os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
            yield endpoint
        finally:
            proc.terminate()
            proc.wait(10)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _wait_until_it_answers(endpoint: str, proc: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the moto S3 server did not start: {log.read()[-2000:]!r}") from None
            time.sleep(0.1)


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client of the server at ``endpoint``, with the dummy keys it accepts."""
    import boto3  # type: ignore[import-untyped]

    return boto3.client("s3", endpoint_url=endpoint, **KEYS)


def main() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=False, use_reloader=False)


if __name__ == "__main__":
    main()
