"""A DAG run every 5 s with one quick task: new runs show that the scheduler in charge
creates and queues work (before and after a failover)."""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(
    dag_id="beat",
    start_date=datetime(2026, 1, 1),
    schedule=timedelta(seconds=5),
    catchup=False,
    max_active_runs=64,  # a backlog on the busy worker never stops new runs
    default_args={"retries": 0},
    is_paused_upon_creation=False,
) as dag:
    BashOperator(task_id="noop", bash_command="true")
