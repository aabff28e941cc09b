"""A DAG paused at creation whose one task runs 15 s: the orphan test (test_airflow3.py)
unpauses it and kills the leader while the task runs; each try records its start and end."""

from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id="slow",
    start_date=datetime(2026, 1, 1),
    schedule=timedelta(hours=1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 0},
    is_paused_upon_creation=True,
) as dag:
    BashOperator(
        task_id="sleep",
        bash_command=(
            'echo "start {{ ti.try_number }} ${FAILOVER_NODE:-?} $(date +%s.%N)" '
            '>> "$E2E_RECORDS.slow"; sleep 15; '
            'echo "end {{ ti.try_number }} ${FAILOVER_NODE:-?} $(date +%s.%N)" >> "$E2E_RECORDS.slow"'
        ),
    )
