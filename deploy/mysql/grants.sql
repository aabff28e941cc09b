-- Least-privilege user for failover on an Airflow metadata database in MySQL 8.0/8.4 or
-- MariaDB 10.6+ (self-managed, or Aurora MySQL v3). Run as an administrator, after replacing
-- `airflow` (the database) and the password:
--   mysql -h <host> -u admin -p < deploy/mysql/grants.sql
-- RDS for MySQL: deploy/mysql/grants-rds.sql.
-- What failover needs, and nothing more:
--   * its own tables (failover_cluster, failover_member, failover_history), created by the
--     daemon on first start in the Airflow database (MySQL grants CREATE on tables that do
--     not exist yet, by name);
--   * SELECT on Airflow's `job` table, to judge the scheduler's heartbeat, and UPDATE of its
--     `state` column ([airflow] release_orphans): before a new scheduler starts, the rows of
--     dead (fenced) schedulers still marked running are set to failed - nothing else of
--     Airflow's is ever written;
--   * named locks (GET_LOCK, IS_USED_LOCK, RELEASE_LOCK): allowed to every user;
--   * KILL of older epochs' keeper sessions: no privilege while every daemon connects as
--     this one user (a user may always KILL its own sessions). Only if daemons use several
--     accounts: CONNECTION_ADMIN on MySQL 8 / Aurora v3, CONNECTION ADMIN on MariaDB 10.5+
--     (SUPER on older servers) - the commented lines at the end.
-- Set [mysql] ssl_ca (and ssl_verify_identity = true) for any server not on this host.

CREATE USER IF NOT EXISTS 'failover'@'%' IDENTIFIED BY 'a long random password';
GRANT CREATE, ALTER, SELECT, INSERT, UPDATE ON `airflow`.`failover_cluster` TO 'failover'@'%';
GRANT CREATE, ALTER, SELECT, INSERT, UPDATE ON `airflow`.`failover_member` TO 'failover'@'%';
GRANT CREATE, ALTER, SELECT, INSERT, UPDATE ON `airflow`.`failover_history` TO 'failover'@'%';
GRANT SELECT ON `airflow`.`job` TO 'failover'@'%';
GRANT UPDATE (state) ON `airflow`.`job` TO 'failover'@'%';
-- Only when daemons connect with different accounts (see above); one of:
-- GRANT CONNECTION_ADMIN ON *.* TO 'failover'@'%';   -- MySQL 8.0+, Aurora MySQL v3
-- GRANT CONNECTION ADMIN ON *.* TO 'failover'@'%';   -- MariaDB 10.5.2+
