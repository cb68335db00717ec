# Sourced by .ci/run (set -euo pipefail, as root, Debian 12): PostgreSQL's packages for the
# PostgreSQL tests. Installs only when missing. No cluster is set up here: scripts/test (the
# README's command, which .ci/run runs) starts a throwaway one for the run by itself and
# removes it at exit (scripts/postgres.sh), so CI runs exactly what a developer runs.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y postgresql
fi
