#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests (Debian's package, see system-deps.sh):
# a fresh cluster in a temp folder, trust auth, 127.0.0.1 only.
#   postgres.sh start   -> prints the DSN line "VA_TEST_POSTGRES_URL=..." into $STATE_FILE
#   postgres.sh stop    -> stops the server and deletes its data
#   postgres.sh status
set -euo pipefail

PORT="${VA_TEST_POSTGRES_PORT:-55432}"
STATE_DIR="${VA_RUN_DIR:-$(pwd)/.run}"
STATE_FILE="$STATE_DIR/postgres.env"

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

# initdb refuses to run as root: run the server as the 'postgres' system user then.
as_db_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bindir datadir
  bindir="$(find_bindir)" || { echo "postgres.sh: no PostgreSQL server binaries: run tests/services/system-deps.sh" >&2; exit 1; }
  mkdir -p "$STATE_DIR"
  if [ -f "$STATE_FILE" ]; then stop; fi
  datadir="$(mktemp -d /tmp/voiceagent-pg.XXXXXX)"
  [ "$(id -u)" = 0 ] && chown postgres: "$datadir"
  as_db_user "$bindir/initdb" -D "$datadir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  as_db_user "$bindir/pg_ctl" -D "$datadir/data" -l "$datadir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $datadir -c fsync=off -c synchronous_commit=off -c max_connections=200" \
    start >/dev/null
  local version
  version="$(as_db_user "$bindir/postgres" --version)"
  cat > "$STATE_FILE" <<ENV
VA_TEST_POSTGRES_URL=postgresql+asyncpg://postgres@127.0.0.1:$PORT/postgres
VA_TEST_POSTGRES_DATADIR=$datadir
VA_TEST_POSTGRES_BINDIR=$bindir
ENV
  echo "postgres.sh: started $version on 127.0.0.1:$PORT (data $datadir)"
}

stop() {
  [ -f "$STATE_FILE" ] || return 0
  # shellcheck disable=SC1090
  . "$STATE_FILE"
  if [ -d "$VA_TEST_POSTGRES_DATADIR/data" ]; then
    as_db_user "$VA_TEST_POSTGRES_BINDIR/pg_ctl" -D "$VA_TEST_POSTGRES_DATADIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$VA_TEST_POSTGRES_DATADIR"
  fi
  rm -f "$STATE_FILE"
  echo "postgres.sh: stopped"
}

status() {
  if [ -f "$STATE_FILE" ]; then
    # shellcheck disable=SC1090
    . "$STATE_FILE"
    as_db_user "$VA_TEST_POSTGRES_BINDIR/pg_ctl" -D "$VA_TEST_POSTGRES_DATADIR/data" status
  else
    echo "postgres.sh: not running"; return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
