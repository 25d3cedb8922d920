#!/usr/bin/env bash
# Makes sure Postgres and NATS (with JetStream) are reachable for `make run`, `make test`
# and `make bench`. Where they already answer at the configured addresses they are used as
# they are; otherwise what is missing is installed from Debian's packages and private
# instances are started under the project's data folder, on their own ports.
# Prints the environment to use (shell assignments) on stdout; progress goes to stderr.
# With --test-venv (`make test`) it also makes .data/venv, a Python venv holding
# tests/requirements.txt (installed again when that file changes), and exports its python as
# LEADS_TEST_PYTHON.
set -euo pipefail

DATA_DIR="${LEADS_DATA_DIR:-$(pwd)/.data}"
PG_HOST="${LEADS_PG_HOST:-127.0.0.1}"
PG_PORT="${LEADS_PG_PORT:-5432}"
NATS_HOST="${LEADS_NATS_HOST:-127.0.0.1}"
NATS_PORT="${LEADS_NATS_PORT:-4222}"
PRIVATE_PG_PORT="${LEADS_PRIVATE_PG_PORT:-55432}"
PRIVATE_NATS_PORT="${LEADS_PRIVATE_NATS_PORT:-54222}"

log() { echo "infra: $*" >&2; }

reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() {
  local host=$1 port=$2 what=$3
  for _ in $(seq 1 100); do
    reachable "$host" "$port" && return 0
    sleep 0.1
  done
  log "$what did not come up on $host:$port"
  return 1
}

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    log "need root to install $*; install them and run again"
    exit 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

ensure_postgres() {
  if reachable "$PG_HOST" "$PG_PORT"; then
    PG_URL_BASE="postgres://postgres@$PG_HOST:$PG_PORT"
    return
  fi
  if reachable 127.0.0.1 "$PRIVATE_PG_PORT"; then
    log "using the private Postgres on port $PRIVATE_PG_PORT"
    PG_URL_BASE="postgres://postgres@127.0.0.1:$PRIVATE_PG_PORT"
    return
  fi
  log "no Postgres at $PG_HOST:$PG_PORT: starting a private one on port $PRIVATE_PG_PORT"
  pg_bin >/dev/null || apt_install postgresql
  local bin dir owner=()
  bin="$(pg_bin)"
  dir="$DATA_DIR/postgres"
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    # Postgres refuses to run as root: run it as the package's postgres user, which must be
    # able to reach the data folder.
    id postgres >/dev/null 2>&1 || useradd --system --home "$dir" postgres
    chown -R postgres "$dir"
    local p="$dir"
    while [ "$p" != "/" ]; do p="$(dirname "$p")"; chmod o+x "$p" 2>/dev/null || true; done
    owner=(runuser -u postgres --)
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${owner[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
  fi
  "${owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w \
    -o "-p $PRIVATE_PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >&2
  wait_for 127.0.0.1 "$PRIVATE_PG_PORT" Postgres
  PG_URL_BASE="postgres://postgres@127.0.0.1:$PRIVATE_PG_PORT"
}

ensure_nats() {
  if reachable "$NATS_HOST" "$NATS_PORT"; then
    NATS_URL="nats://$NATS_HOST:$NATS_PORT"
    return
  fi
  if reachable 127.0.0.1 "$PRIVATE_NATS_PORT"; then
    log "using the private NATS on port $PRIVATE_NATS_PORT"
    NATS_URL="nats://127.0.0.1:$PRIVATE_NATS_PORT"
    return
  fi
  log "no NATS at $NATS_HOST:$NATS_PORT: starting a private one on port $PRIVATE_NATS_PORT"
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
  local server
  server="$(command -v nats-server || echo /usr/sbin/nats-server)"
  mkdir -p "$DATA_DIR/nats"
  nohup "$server" -a 127.0.0.1 -p "$PRIVATE_NATS_PORT" -js -sd "$DATA_DIR/nats" \
    -l "$DATA_DIR/nats/nats.log" >/dev/null 2>&1 &
  wait_for 127.0.0.1 "$PRIVATE_NATS_PORT" NATS
  NATS_URL="nats://127.0.0.1:$PRIVATE_NATS_PORT"
}

ensure_test_venv() {
  local venv="$DATA_DIR/venv" requirements=tests/requirements.txt
  local stamp="$venv/.requirements"
  if [ ! -x "$venv/bin/python" ]; then
    log "making the tests' Python venv in $venv"
    mkdir -p "$DATA_DIR"
    python3 -m venv "$venv" >/dev/null 2>&1 || { rm -rf "$venv"; apt_install python3-venv && python3 -m venv "$venv" >&2; }
  fi
  if ! cmp -s "$requirements" "$stamp"; then
    log "installing $requirements into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >&2
    cp "$requirements" "$stamp"
  fi
  TEST_PYTHON="$venv/bin/python"
}

# Debian's Chromium, for the browser tests (`infra.sh --browser`): Playwright drives it as
# it is and never downloads a browser of its own.
ensure_chromium() {
  command -v chromium >/dev/null && return
  log "no chromium: installing Debian's"
  apt_install --no-install-recommends chromium
}

ensure_postgres
ensure_nats
for arg in "$@"; do
  if [ "$arg" = --browser ]; then
    ensure_chromium
  fi
done
TEST_PYTHON=
if [ "${1:-}" = --test-venv ]; then
  ensure_test_venv
fi
echo "export LEADS_TEST_DATABASE_URL=$PG_URL_BASE/postgres"
echo "export LEADS_TEST_NATS_URL=$NATS_URL"
echo "export LEADS_ADMIN_DATABASE_URL=$PG_URL_BASE/postgres"
echo "export LEADS_DATABASE_URL=\${LEADS_DATABASE_URL:-$PG_URL_BASE/leads}"
echo "export LEADS_NATS_URL=\${LEADS_NATS_URL:-$NATS_URL}"
if [ -n "$TEST_PYTHON" ]; then
  echo "export LEADS_TEST_PYTHON=$TEST_PYTHON"
fi
