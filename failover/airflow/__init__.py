"""What the controller knows of Airflow: its settings, the scheduler's health rules, and the
pre-warmed scheduler run by Airflow's own interpreter. No database driver here."""
