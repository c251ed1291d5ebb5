#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the store tests and print how to reach it:
#
#     eval "$(bash .ci/postgres.sh)"      # exports INSTIL_TEST_POSTGRES_URL=postgresql+psycopg://...
#
# Installs Debian's postgresql when it is missing (needs root and apt), initialises a cluster under
# $INSTIL_PG_DIR (default /tmp/instil-pg), starts it on 127.0.0.1 at a free port, and creates a database.
# Idempotent: a second call reuses the running server. On any failure it warns on stderr, prints nothing on stdout
# and exits 0, so the postgres tests skip instead of failing. Stop it with: bash .ci/postgres.sh stop
set -uo pipefail

PGDIR="${INSTIL_PG_DIR:-/tmp/instil-pg}"
DATA="$PGDIR/data"
DB=instil_test
SUPERUSER=instil

warn() { echo "postgres.sh: $*; the PostgreSQL store tests will be skipped" >&2; exit 0; }
log() { echo "postgres.sh: $*" >&2; }

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# The server refuses to run as root: run its tools as the `postgres` user then (Debian's package creates it).
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

BIN=$(bindir)
if [ "${1:-}" = stop ]; then
  [ -n "$BIN" ] && [ -d "$DATA" ] && as_owner "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2
  exit 0
fi

if [ -z "$BIN" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian's postgresql"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2 \
      || warn "apt-get install postgresql failed"
    BIN=$(bindir)
  fi
  [ -n "$BIN" ] || warn "PostgreSQL is not installed and cannot be installed here (needs root and apt-get)"
fi

mkdir -p "$PGDIR" || warn "cannot create $PGDIR"
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || warn "the postgres user does not exist"
  chown postgres: "$PGDIR" || warn "cannot hand $PGDIR to the postgres user"
fi

if ! as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  if [ ! -f "$DATA/PG_VERSION" ]; then
    # Trust auth on loopback only: a throwaway test server that listens on 127.0.0.1 and a private socket dir.
    as_owner "$BIN/initdb" -D "$DATA" -U "$SUPERUSER" --auth=trust -E UTF8 --locale=C.UTF-8 >"$PGDIR/initdb.log" 2>&1 \
      || as_owner "$BIN/initdb" -D "$DATA" -U "$SUPERUSER" --auth=trust -E UTF8 --locale=C >"$PGDIR/initdb.log" 2>&1 \
      || warn "initdb failed (see $PGDIR/initdb.log)"
  fi
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    || warn "cannot find a free port"
  as_owner "$BIN/pg_ctl" -D "$DATA" -l "$PGDIR/server.log" -w -t 60 \
    -o "-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >&2 \
    || warn "the server did not start (see $PGDIR/server.log)"
  echo "$PORT" >"$PGDIR/port"
fi

PORT=$(cat "$PGDIR/port" 2>/dev/null) || warn "the running server's port is unknown ($PGDIR/port is missing)"
"$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 30 || warn "the server on 127.0.0.1:$PORT does not answer"
if ! "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U "$SUPERUSER" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" \
  | grep -q 1; then
  "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U "$SUPERUSER" "$DB" >&2 || warn "createdb $DB failed"
fi
echo "export INSTIL_TEST_POSTGRES_URL=postgresql+psycopg://$SUPERUSER@127.0.0.1:$PORT/$DB"
