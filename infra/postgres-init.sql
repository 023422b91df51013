-- The MLflow database is POSTGRES_DB; Prefect gets its own database on the same server.
CREATE DATABASE prefect;
