# Sourced by .ci/run (set -euo pipefail, as root, Debian 12): a local PostgreSQL for the
# store tests. Idempotent: installs only when missing, reuses a running cluster.
# Exports RELAY_TEST_POSTGRES_URL so the PostgreSQL tests run instead of being skipped.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y postgresql
fi
RELAY_PG_VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! pg_lsclusters -h | awk -v v="$RELAY_PG_VERSION" '$1 == v && $2 == "main" {found=1} END {exit !found}'; then
    pg_createcluster "$RELAY_PG_VERSION" main
fi
# listen on loopback only; the tests open a few dozen connections at once
RELAY_PG_CONF="/etc/postgresql/${RELAY_PG_VERSION}/main/conf.d/relay-test.conf"
RELAY_PG_WANT="$(printf "listen_addresses = '127.0.0.1'\nmax_connections = 200\n")"
RELAY_PG_CHANGED=0
if [ "$(cat "$RELAY_PG_CONF" 2>/dev/null || true)" != "$RELAY_PG_WANT" ]; then
    mkdir -p "$(dirname "$RELAY_PG_CONF")"
    printf '%s\n' "$RELAY_PG_WANT" > "$RELAY_PG_CONF"
    RELAY_PG_CHANGED=1
fi
if ! pg_ctlcluster "$RELAY_PG_VERSION" main status >/dev/null 2>&1; then
    pg_ctlcluster "$RELAY_PG_VERSION" main start
elif [ "$RELAY_PG_CHANGED" = 1 ]; then
    pg_ctlcluster "$RELAY_PG_VERSION" main restart
fi
RELAY_PG_PORT="$(pg_conftool -s "$RELAY_PG_VERSION" main show port)"
for _ in $(seq 1 30); do
    if runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p "$RELAY_PG_PORT"; then break; fi
    sleep 1
done
# a throwaway password for a loopback-only test cluster
runuser -u postgres -- psql -q -p "$RELAY_PG_PORT" -v ON_ERROR_STOP=1 \
    -c "ALTER ROLE postgres PASSWORD 'relay-test'" >/dev/null
export RELAY_TEST_POSTGRES_URL="postgresql://postgres:relay-test@127.0.0.1:${RELAY_PG_PORT}/postgres"
unset RELAY_PG_VERSION RELAY_PG_PORT RELAY_PG_CHANGED RELAY_PG_CONF RELAY_PG_WANT
