"""Tasks that run for a while on the Celery worker (SLOW_SECONDS, default 20): a failover
happens while some run and others wait in the broker. Each try appends one record line."""

import os
from datetime import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

SECONDS = int(os.environ.get("SLOW_SECONDS", "20"))
TASKS = int(os.environ.get("SLOW_TASKS", "4"))

with DAG(
    dag_id="slow",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    max_active_runs=16,
    default_args={"retries": 0},
    is_paused_upon_creation=False,
) as dag:
    for i in range(TASKS):
        BashOperator(
            task_id=f"work{i}",
            bash_command=(
                'echo "{{ run_id }} {{ ti.task_id }} {{ ti.try_number }}" >> "$E2E_RECORDS"; '
                f"sleep {SECONDS}"
            ),
            append_env=True,
        )
