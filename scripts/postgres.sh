# Sourced by scripts/test: PostgreSQL for the PostgreSQL tests.
#
# The PostgreSQL tests (store contract, lease expiry, several processes, an outage) run
# against RELAY_TEST_POSTGRES_URL. When it is not set and PostgreSQL's server binaries
# are installed (the newest /usr/lib/postgresql/<version>/bin, or the directory in
# RELAY_TEST_POSTGRES_BIN), relay_pg_start starts a throwaway
# cluster for this run: initdb in a new temporary directory, a random password, a free
# port on 127.0.0.1 (another one if it was taken meanwhile), run as a non-root user when
# the script runs as root (PostgreSQL refuses root). It is stopped and removed when the
# script exits, whether the tests passed, failed or were interrupted. When the binaries
# are missing, relay_pg_report says loudly how many tests were skipped and how to get them.

RELAY_PG_DIR=""
RELAY_PG_BIN=""
RELAY_PG_AS=()
RELAY_PG_STARTED_HERE=0

relay_pg_stop() {
    if [ -n "$RELAY_PG_DIR" ] && [ -d "$RELAY_PG_DIR" ]; then
        if [ "$RELAY_PG_STARTED_HERE" = 1 ]; then
            "${RELAY_PG_AS[@]}" "$RELAY_PG_BIN/pg_ctl" -D "$RELAY_PG_DIR/data" -m immediate -w stop \
                >/dev/null 2>&1 || true
        fi
        rm -rf "$RELAY_PG_DIR"
    fi
    RELAY_PG_DIR=""
}

relay_pg_free_port() {
    .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

relay_pg_start() {
    if [ -n "${RELAY_TEST_POSTGRES_URL:-}" ]; then
        echo "PostgreSQL tests: using RELAY_TEST_POSTGRES_URL" >&2
        return 0
    fi
    RELAY_PG_BIN="${RELAY_TEST_POSTGRES_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
    if [ -z "$RELAY_PG_BIN" ] || [ ! -x "$RELAY_PG_BIN/initdb" ] || [ ! -x "$RELAY_PG_BIN/pg_ctl" ]; then
        RELAY_PG_BIN=""
        return 0
    fi
    RELAY_PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/relay-test-pg.XXXXXX")"
    trap relay_pg_stop EXIT
    trap 'relay_pg_stop; exit 130' INT
    trap 'relay_pg_stop; exit 143' TERM
    RELAY_PG_AS=()
    local password user=""
    password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    printf '%s\n' "$password" > "$RELAY_PG_DIR/pwfile"
    if [ "$(id -u)" = 0 ]; then
        user=nobody
        if id -u postgres >/dev/null 2>&1; then user=postgres; fi
        chown "$user" "$RELAY_PG_DIR" "$RELAY_PG_DIR/pwfile"
        RELAY_PG_AS=(runuser -u "$user" --)
    fi
    if ! "${RELAY_PG_AS[@]}" "$RELAY_PG_BIN/initdb" -D "$RELAY_PG_DIR/data" -U postgres \
            --pwfile="$RELAY_PG_DIR/pwfile" --auth-host=scram-sha-256 --auth-local=peer \
            -E UTF8 --no-instructions >"$RELAY_PG_DIR/initdb.log" 2>&1; then
        cat "$RELAY_PG_DIR/initdb.log" >&2
        echo "scripts/test: initdb failed; the PostgreSQL tests cannot run" >&2
        return 1
    fi
    rm -f "$RELAY_PG_DIR/pwfile"
    local port attempt
    for attempt in 1 2 3 4 5; do
        port="$(relay_pg_free_port)"
        # Loopback only, its socket in the temporary directory; durability is not needed
        # for a cluster removed at exit, speed is.
        if "${RELAY_PG_AS[@]}" "$RELAY_PG_BIN/pg_ctl" -D "$RELAY_PG_DIR/data" -w -t 60 \
                -l "$RELAY_PG_DIR/server.log" \
                -o "-p $port -k $RELAY_PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
                start >/dev/null 2>&1; then
            RELAY_PG_STARTED_HERE=1
            export RELAY_TEST_POSTGRES_URL="postgresql://postgres:${password}@127.0.0.1:${port}/postgres"
            echo "PostgreSQL tests: a throwaway cluster ($("$RELAY_PG_BIN/postgres" --version)) on 127.0.0.1:${port}, removed at exit" >&2
            return 0
        fi
        if ! grep -qi "address already in use\|could not bind" "$RELAY_PG_DIR/server.log" 2>/dev/null; then
            break  # not a port race: give up and show why
        fi
        echo "scripts/test: port ${port} was taken meanwhile (try ${attempt}); another one" >&2
        : > "$RELAY_PG_DIR/server.log"
    done
    cat "$RELAY_PG_DIR/server.log" >&2 2>/dev/null || true
    echo "scripts/test: could not start the throwaway PostgreSQL; the PostgreSQL tests cannot run" >&2
    return 1
}

relay_pg_report() {
    if [ -n "${RELAY_TEST_POSTGRES_URL:-}" ]; then
        return 0
    fi
    local count
    count="$(.venv/bin/python -m pytest --collect-only -q -m postgres -p no:cacheprovider "$@" 2>/dev/null \
        | grep -c '::' || true)"
    cat >&2 <<EOF

!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! ${count} PostgreSQL tests were SKIPPED: PostgreSQL's server binaries are not installed
!! (no initdb in ${RELAY_TEST_POSTGRES_BIN:-/usr/lib/postgresql/*/bin}) and
!! RELAY_TEST_POSTGRES_URL is not set.
!! Install them (Debian/Ubuntu: apt-get install postgresql) and scripts/test starts a
!! throwaway cluster by itself, or point RELAY_TEST_POSTGRES_URL at a server whose user
!! may create databases.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
EOF
}
