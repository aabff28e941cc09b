"""A DAG whose runs do not wait for each other (unlike `tick`): a task orphaned by a killed
scheduler (Airflow resets it only once the old job's heartbeat is stale) blocks no later run."""

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="tock",
    start_date=datetime(2026, 1, 1),
    schedule=timedelta(seconds=4),
    catchup=False,
    max_active_runs=16,
    default_args={"retries": 0},
    is_paused_upon_creation=False,
) as dag:
    BashOperator(task_id="noop", bash_command="true")
