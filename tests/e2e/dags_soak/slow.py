"""The soak's DAG: a 10 s task every 5 s, up to three runs at once; each try records its start,
a beat a second and its end (node, try, wall clock), so two tries of one run alive at once show."""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

RECORD = (
    'echo "{{ run_id }} {{ ti.try_number }} ${FAILOVER_NODE:-?} WORD $(date +%s.%N)"'
    ' >> "$E2E_RECORDS"'
)
# A beat every second while the try runs: a killed try's last beat bounds when it died.
WORK = f"for i in $(seq 10); do {RECORD.replace('WORD', 'beat')}; sleep 1; done"

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
        + f" && {WORK} && "
        + RECORD.replace("WORD", "end"),
    )
