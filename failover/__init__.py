"""Airflow scheduler failover controller.

One daemon per candidate host elects a leader and runs `airflow scheduler` only there.
"""

__version__ = "0.1.0"
