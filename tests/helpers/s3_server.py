"""A real S3-compatible HTTP server on 127.0.0.1 for the tests: moto's, one request at a time.

``python -m tests.helpers.s3_server PORT``. moto enforces ``If-None-Match`` and ``If-Match`` on
PutObject and DeleteObject (412 PreconditionFailed), which the S3 lease relies on. Serving requests one
at a time makes each conditional write atomic, as it is on S3 (moto's threaded server checks and
stores in two steps, which two threads could interleave).
"""

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


def main() -> None:
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=False, use_reloader=False)


if __name__ == "__main__":
    main()
