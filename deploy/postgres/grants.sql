-- Least-privilege role for failover on the Airflow metadata database.
-- Run as an administrator (RDS: the master user) connected to the Airflow database:
--   psql -v dbname=airflow -v password="'<a long random password>'" -d airflow \
--        -f deploy/postgres/grants.sql
-- What failover needs, and nothing more:
--   * CONNECT to the database (lock, LISTEN, store, keeper sessions);
--   * its own tables (failover_cluster, failover_member, failover_history), created by the
--     daemon on first start in the schema below;
--   * SELECT on Airflow's "job" table, to judge the scheduler's heartbeat, and UPDATE of its
--     "state" column ([airflow] release_orphans): before a new scheduler starts, the rows of
--     dead (fenced) schedulers still marked running are set to failed, as Airflow itself
--     does once their heartbeat is stale - nothing else of Airflow's is ever written;
--   * session advisory locks and LISTEN/NOTIFY: allowed to every role, nothing to grant;
--   * pg_signal_backend, to terminate sessions of older epochs when fencing
--     (on RDS/Aurora: GRANT rds_superuser instead, as pg_signal_backend cannot be granted there
--     to terminate rdsadmin sessions - failover never needs to).
-- Use sslmode=verify-full in the DSN for any server that is not on this host.

CREATE ROLE failover LOGIN PASSWORD :password;
GRANT CONNECT ON DATABASE :"dbname" TO failover;
CREATE SCHEMA IF NOT EXISTS failover AUTHORIZATION failover;
GRANT USAGE ON SCHEMA failover TO failover;
ALTER ROLE failover SET search_path = failover, public;
GRANT USAGE ON SCHEMA public TO failover;
GRANT SELECT ON TABLE public.job TO failover;
GRANT UPDATE (state) ON TABLE public.job TO failover;
GRANT pg_signal_backend TO failover;
