# Shared by scripts/test.sh and scripts/dev.sh: install what is missing and
# run a throwaway Postgres with the Supabase schema. Source it; do not run it.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE="$ROOT/.cache"
SUPABASE_CLI_VERSION=2.117.0
BUF_VERSION=1.75.0
# PGBIN: the PostgreSQL server binaries (initdb, pg_ctl). The default is
# Debian 12's postgresql-15, installed when missing; point it at another
# installation (another version, PGDG, a source build) to use that instead.
PGBIN_DEFAULT=/usr/lib/postgresql/15/bin
PGBIN=${PGBIN:-$PGBIN_DEFAULT}

log() { printf '==> %s\n' "$*" >&2; }

# Go 1.26 lives in /usr/local/go on these machines; a non-login shell may
# not have it on PATH.
command -v go >/dev/null 2>&1 || PATH="/usr/local/go/bin:$PATH"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install PKG... installs the Debian packages that are not installed yet.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${missing[@]}" >/dev/null
}

# distro prints /etc/os-release's ID and VERSION_ID, e.g. "debian 12".
distro() {
  (. /etc/os-release 2>/dev/null && echo "${ID:-unknown} ${VERSION_ID:-}")
}

# supabase_cli puts the pinned Supabase CLI on PATH (npm, cached in .cache/).
supabase_cli() {
  local dir="$CACHE/supabase-cli"
  if [ "$("$dir/node_modules/.bin/supabase" --version 2>/dev/null)" != "$SUPABASE_CLI_VERSION" ]; then
    command -v npm >/dev/null || apt_install npm
    log "installing supabase CLI $SUPABASE_CLI_VERSION"
    mkdir -p "$dir"
    (cd "$dir" && npm i -E --no-audit --no-fund --silent "supabase@$SUPABASE_CLI_VERSION" >/dev/null)
  fi
  PATH="$dir/node_modules/.bin:$PATH"
}

# buf_cli puts the pinned buf on PATH: npm's @bufbuild/buf ships the
# prebuilt binary (a few MB, seconds) where `go run` of buf built 78 modules
# from source (233 s cold). Cached in .cache/ like the Supabase CLI.
buf_cli() {
  local dir="$CACHE/buf"
  if [ "$("$dir/node_modules/.bin/buf" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
    command -v npm >/dev/null || apt_install npm
    log "installing buf $BUF_VERSION"
    mkdir -p "$dir"
    (cd "$dir" && npm i -E --no-audit --no-fund --silent "@bufbuild/buf@$BUF_VERSION" >/dev/null)
  fi
  PATH="$dir/node_modules/.bin:$PATH"
}

# port_free tcp|udp HOST PORT succeeds when coap-server or the relay could
# bind HOST:PORT: it binds the way Go's listeners do on Linux. net.Listen
# sets SO_REUSEADDR on TCP sockets, so a port whose last connection is only
# in TIME-WAIT (up to 60 s after a stop) is free; UDP listeners do not set it
# (and UDP has no TIME-WAIT), so neither does the probe.
port_free() {
  python3 - "$@" <<'PY' 2>/dev/null
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
if proto == "tcp":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
if proto == "tcp":
    s.listen(1)
PY
}

free_port() {
  command -v python3 >/dev/null || apt_install python3
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# pg_tools makes sure initdb/pg_ctl are in PGBIN and psql is on PATH,
# installing Debian's postgresql-15 for the default PGBIN. Debian 12 ships
# it; Debian 13 and Ubuntu need the PostgreSQL project's repository (PGDG),
# or PGBIN set to the PostgreSQL they have.
pg_tools() {
  if [ ! -x "$PGBIN/initdb" ]; then
    [ "$PGBIN" = "$PGBIN_DEFAULT" ] || { log "no initdb in PGBIN=$PGBIN"; return 1; }
    apt_install postgresql-15 postgresql-client-15 || {
      log "postgresql-15 is not in this system's package sources ($(distro)). Either add PGDG:"
      log "  sudo apt-get install -y postgresql-common && sudo /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh"
      log "or set PGBIN to another PostgreSQL's bin directory, e.g. PGBIN=/usr/lib/postgresql/16/bin"
      return 1
    }
  fi
  command -v psql >/dev/null || PATH="$PGBIN:$PATH"
}

# pg_start starts a throwaway cluster (as the postgres user when root: it
# refuses to run as root), exports PG_DIR, PG_PORT and PG_URL (superuser),
# and registers pg_stop on exit.
pg_start() {
  pg_tools
  PG_DIR=$(mktemp -d /tmp/nbiot-pg.XXXXXX)
  PG_PORT=$(free_port)
  local run=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$PG_DIR"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$PGBIN/initdb" -D "$PG_DIR/data" -U postgres -A trust --no-sync -E UTF8 >/dev/null
  "${run[@]}" "$PGBIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -t 60 start \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null
  PG_RUN=("${run[@]}")
  PG_ADMIN_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
  # The schema goes into its own database so tests can clone it
  # (CREATE DATABASE ... TEMPLATE nbiot) and never see each other's rows.
  psql -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" -c "create database nbiot"
  PG_URL="postgresql://postgres@127.0.0.1:$PG_PORT/nbiot?sslmode=disable"
  export PG_DIR PG_PORT PG_URL PG_ADMIN_URL
  log "postgres on 127.0.0.1:$PG_PORT ($PG_DIR)"
}

pg_stop() {
  [ -n "${PG_DIR:-}" ] || return 0
  "${PG_RUN[@]}" "$PGBIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=
}

# pg_schema applies the local stand-ins for what Supabase provides (roles,
# auth schema) and then the real migrations with `supabase db push`.
pg_schema() {
  supabase_cli
  psql -q -v ON_ERROR_STOP=1 "$PG_URL" -f "$ROOT/scripts/local/bootstrap.sql" >/dev/null
  (cd "$ROOT" && supabase db push --db-url "$PG_URL" --yes >"$PG_DIR/push.log" 2>&1) || {
    cat "$PG_DIR/push.log" >&2
    return 1
  }
  log "migrations pushed"
}
