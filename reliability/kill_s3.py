"""An S3 store for ``python -m reliability.kill --backends s3``: a moto server of the campaign's own.

moto (a test dependency) serves requests one at a time (``tests.helpers.s3_server``), so its conditional
writes are atomic as on S3. The bucket's credentials reach the children as the Airflow connection
``checkmate_reliability_s3`` in their environment. The test suite uses its session server instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from reliability.kill_store import Store, s3_store

CONN_ID = "checkmate_reliability_s3"
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def s3_campaign_store() -> Iterator[Store]:
    """A fresh bucket on a moto server on a free loopback port, stopped on exit."""
    import boto3  # type: ignore[import-untyped]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.s3_server", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in (f"AIRFLOW_CONN_{CONN_ID.upper()}", "AWS_EC2_METADATA_DISABLED")}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        extra = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(conn)
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        bucket = f"checkmate-kill-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        yield s3_store(f"s3://{bucket}/state", endpoint, CONN_ID)
    finally:
        proc.terminate()
        proc.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
