-- Least-privilege user for failover on RDS for MySQL (no SUPER, no CONNECTION_ADMIN for
-- other users). Run as the master user, after replacing `airflow` and the password:
--   mysql -h <instance>.rds.amazonaws.com -u admin -p --ssl-ca=global-bundle.pem \
--         < deploy/mysql/grants-rds.sql
-- As deploy/mysql/grants.sql, plus: where KILL of another account's session is denied,
-- failover calls mysql.rds_kill(id) (needs EXECUTE on it). With RDS IAM authentication
-- ([mysql] iam_auth = true) create the user WITH AWSAuthenticationPlugin AS 'RDS' instead
-- of a password, and connect over TLS ([mysql] ssl_ca = the RDS CA bundle).

CREATE USER IF NOT EXISTS 'failover'@'%' IDENTIFIED BY 'a long random password';
-- IAM instead: CREATE USER 'failover'@'%' IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS';
--              ALTER USER 'failover'@'%' REQUIRE SSL;
GRANT CREATE, ALTER, SELECT, INSERT, UPDATE ON `airflow`.`failover_cluster` TO 'failover'@'%';
GRANT CREATE, ALTER, SELECT, INSERT, UPDATE ON `airflow`.`failover_member` TO 'failover'@'%';
GRANT CREATE, ALTER, SELECT, INSERT, UPDATE ON `airflow`.`failover_history` TO 'failover'@'%';
GRANT SELECT ON `airflow`.`job` TO 'failover'@'%';
GRANT UPDATE (state) ON `airflow`.`job` TO 'failover'@'%';
GRANT EXECUTE ON PROCEDURE `mysql`.`rds_kill` TO 'failover'@'%';
