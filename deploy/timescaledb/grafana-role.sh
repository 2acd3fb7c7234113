#!/bin/sh
# Runs once, when the database volume is first initialised: the role Grafana connects as. It may
# read every table cityops creates and nothing more (panel variables are put into the SQL as
# they are), and no query of its runs longer than 30 s.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="$CITYOPS_GRAFANA_DB_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
create role cityops_grafana login password :'password';
grant connect on database :"db" to cityops_grafana;
grant usage on schema public to cityops_grafana;
alter default privileges for role postgres in schema public
    grant select on tables to cityops_grafana;
alter role cityops_grafana set statement_timeout = '30s';
alter role cityops_grafana set default_transaction_read_only = on;
SQL
