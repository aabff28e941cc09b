"""The keeper and what it needs: the process between the daemon and the child, its warm
standby, the process-tree helpers, the proof of life, and the daemon's launcher for it.

Standard library only (psycopg2 for the PostgreSQL proof session); imports nothing of the daemon.
"""
