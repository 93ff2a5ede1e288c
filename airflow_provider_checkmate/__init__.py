"""The distribution's own import name, ``airflow-provider-checkmate`` -> ``airflow_provider_checkmate``.

Airflow finds a provider's example DAGs by importing the module named after the distribution and
looking for ``example_dags`` beside it; the provider's code lives in :mod:`airflow_checkmate`. This
package holds only the example DAGs (``example_dags`` is a link to the repository's ``dags_examples/``;
the wheel holds the files), so they load with ``[core] load_examples = True``.
"""
