"""A DAG with one short task every 5 seconds; each run appends its run_id to a file."""

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="tick",
    start_date=datetime(2026, 1, 1),
    schedule=timedelta(seconds=5),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0},
    is_paused_upon_creation=False,
) as dag:
    BashOperator(
        task_id="record",
        bash_command='echo "{{ run_id }} ${FAILOVER_NODE:-?}" >> "$E2E_RECORDS"',
    )
