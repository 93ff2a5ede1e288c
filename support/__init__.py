"""What tests, benchmarks and reliability campaigns share: stages that journal their runs, child processes,
real Airflow (dags test, a live stack, a Celery stack), PostgreSQL and S3 servers, a browser. Never imports a
test module; test modules, ``bench`` and ``reliability`` import from here."""
