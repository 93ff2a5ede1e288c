"""Airflow plugin: the CheckMate view inside the Airflow 3 UI.

- a "CheckMate" tab on every task instance page (``external_views``, destination ``task_instance``): the UI
  shows plugin tabs on every task instance, so for tasks that are not CheckMateOperator/CheckMateSensor the
  tab says so;
- a "CheckMate" navigation entry (``external_views``, destination ``nav``) listing the tasks of the registry;
- the FastAPI app behind both, mounted at ``/checkmate`` (:mod:`airflow_checkmate.plugins.app`).

External views were chosen over ``react_apps``: plain HTML, CSS and JavaScript shipped in the wheel, no build
step, and the UI opens them same-origin so Airflow's session authenticates them.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_checkmate.plugins.app import create_app

TAB_HREF = "/checkmate/ti?dag_id={DAG_ID}&run_id={RUN_ID}&task_id={TASK_ID}&map_index={MAP_INDEX}"


class CheckMatePlugin(AirflowPlugin):
    """Serves the CheckMate pages under ``/checkmate`` and adds them to the UI's navigation and task instance tabs."""

    name = "checkmate"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/checkmate", "name": "CheckMate"}]
    external_views = [
        {"name": "CheckMate", "href": "/checkmate/", "destination": "nav", "url_route": "checkmate"},
        {"name": "CheckMate", "href": TAB_HREF, "destination": "task_instance", "url_route": "checkmate-ti"},
    ]
