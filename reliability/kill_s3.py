"""An S3 store for ``python -m reliability.kill --backends s3``: a moto server of the campaign's own.

moto (a test dependency) serves requests one at a time (``support.s3_server``), so its conditional
writes are atomic as on S3. The bucket's credentials reach the children as the Airflow connection
``checkmate_reliability_s3`` in their environment. The test suite uses its session server instead.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from reliability.kill_store import Store, s3_store
from support.s3_server import running_s3_server, s3_client

CONN_ID = "checkmate_reliability_s3"


@contextlib.contextmanager
def s3_campaign_store() -> Iterator[Store]:
    """A fresh bucket on a moto server on a free loopback port, stopped on exit."""
    with running_s3_server(CONN_ID) as endpoint:
        bucket = f"checkmate-kill-{uuid.uuid4().hex[:8]}"
        s3_client(endpoint).create_bucket(Bucket=bucket)
        yield s3_store(f"s3://{bucket}/state", endpoint, CONN_ID)
