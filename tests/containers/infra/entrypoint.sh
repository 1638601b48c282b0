#!/bin/sh
# The container tier's infrastructure roles (tests only):
#   postgres                      Debian's PostgreSQL 15 on 0.0.0.0:5432, role streamflow (POSTGRES_PASSWORD) owning
#                                 the databases streamflow and mlflow (the chart's external database)
#   forward PORT HOST:PORT ...    TCP forwarders: what a Service's port → targetPort does on a cluster
#   router PORT URL               POST / → URL: the InferenceGraph router's one Sequence step (KServe's router image
#                                 cannot be pulled here)
set -eu
role=${1:?role: postgres | forward | router}
shift
case $role in
    postgres)
        : "${POSTGRES_PASSWORD:?}"
        bin=/usr/lib/postgresql/15/bin
        data=/var/lib/postgresql/tier
        mkdir -p "$data" /var/run/postgresql
        chown postgres:postgres "$data" /var/run/postgresql
        runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            >/dev/null
        echo "listen_addresses = '*'" >>"$data/postgresql.conf"
        echo "host all all 0.0.0.0/0 scram-sha-256" >>"$data/pg_hba.conf"
        runuser -u postgres -- "$bin/pg_ctl" -D "$data" -o "-c listen_addresses=''" -w -s start
        runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -v pw="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE streamflow LOGIN PASSWORD :'pw';
CREATE DATABASE streamflow OWNER streamflow;
CREATE DATABASE mlflow OWNER streamflow;
SQL
        runuser -u postgres -- "$bin/pg_ctl" -D "$data" -w -s stop
        exec runuser -u postgres -- "$bin/postgres" -D "$data"
        ;;
    forward | router) exec python3 /opt/streamflow-test/forward.py "$role" "$@" ;;
    *) echo "unknown role $role" >&2; exit 2 ;;
esac
