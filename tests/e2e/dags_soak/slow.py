"""The soak's DAG: a 10 s task every 5 s, up to three runs at once; each try records its start
and end (node, try, wall clock) so that two tries of one run overlapping in time show up."""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

RECORD = (
    'echo "{{ run_id }} {{ ti.try_number }} ${FAILOVER_NODE:-?} WORD $(date +%s.%N)"'
    ' >> "$E2E_RECORDS"'
)

with DAG(
    dag_id="slow",
    start_date=datetime(2026, 1, 1),
    schedule=timedelta(seconds=5),
    catchup=False,
    max_active_runs=3,
    default_args={"retries": 0},
    is_paused_upon_creation=False,
) as dag:
    BashOperator(
        task_id="work",
        bash_command=RECORD.replace("WORD", "start")
        + " && sleep 10 && "
        + RECORD.replace("WORD", "end"),
    )
