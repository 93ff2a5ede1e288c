"""DAGs and stage code of the chained-tasks benchmark (bench.airflow_chain); the folder is its dags folder."""
