#!/usr/bin/env bash
# Runs the whole stack on this machine and prints the Live Logs page URL:
# a throwaway Postgres with the real migrations, coap-server storing into it,
# the relay with real token checks, and a simulated fleet. Ctrl-C stops
# everything and removes the database.
#
#   scripts/dev.sh                       local Postgres (installs what is missing)
#   DEVICES=5 RATE=10 scripts/dev.sh     a bigger simulated fleet
#   BIND=0.0.0.0 scripts/dev.sh          let real devices on your LAN reach CoAP
#   COAP_PORT=15683 HTTP_PORT=18080 RELAY_PORT=18090 scripts/dev.sh   other ports
#   LOG_LEVEL=debug scripts/dev.sh       more detail in .cache/dev-logs/ (all three processes)
#   ALLOWED_ORIGINS=http://localhost:5173 scripts/dev.sh   your frontend may open the relay's socket
#   PGBIN=/usr/lib/postgresql/16/bin scripts/dev.sh        another PostgreSQL than Debian's 15
#
# Local sign-in: the relay verifies tokens with a freshly generated HS256
# secret (as a legacy Supabase project does) and checks device access in
# Postgres under the real RLS policies. The script creates a local user who
# owns the simulated devices and prints a page URL carrying that user's
# token; the page moves it to sessionStorage and out of the address bar.
#
# Against a real Supabase project (hosted, or `supabase start`) set
#   SUPABASE_URL, SUPABASE_SERVICE_KEY (coap-server) and SUPABASE_ANON_KEY (relay)
# and optionally DATABASE_URL (direct storage and access check),
# SUPABASE_JWT_SECRET (legacy HS256 projects, and `supabase start`), and
# DEV_USER_ID (an existing user's UUID: the simulated devices are given to
# that user, and with SUPABASE_JWT_SECRET a token is minted for them).
# Apply the migrations first: `supabase link` + `supabase db push`.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$ROOT"

DEVICES=${DEVICES:-3}
RATE=${RATE:-2}
BIND=${BIND:-127.0.0.1}
COAP_PORT=${COAP_PORT:-5683}
HTTP_PORT=${HTTP_PORT:-8080}
RELAY_PORT=${RELAY_PORT:-8090}
PREFIX=SIM # scripts/simulate names its devices SIM-0001, SIM-0002, …

die() { printf 'dev.sh: %s\n' "$*" >&2; exit 1; }
rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }

RUN=$(mktemp -d /tmp/nbiot-dev.XXXXXX)
LOGS="$CACHE/dev-logs"
PIDS=()
cleanup() {
  # A second signal must not cut the cleanup short and leave Postgres
  # running: timeout(1) signals the script and then its process group, and
  # a user may press Ctrl-C twice. (One arriving before this line runs the
  # INT/TERM trap, which cleans up in full itself.)
  trap '' INT TERM
  trap - EXIT
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  pg_stop
  rm -rf "$RUN"
  log "stopped; logs are in $LOGS"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# --- 1. tools -----------------------------------------------------------------
command -v go >/dev/null || die "Go 1.26 is required (https://go.dev/dl/); Debian's golang package is too old"
command -v python3 >/dev/null || apt_install python3
command -v curl >/dev/null || apt_install curl
# A clear word before building; the servers themselves still exit with one
# line naming COAP_ADDR or HTTP_ADDR if a port is taken in the meantime.
for probe in "udp $COAP_PORT COAP_PORT" "tcp $HTTP_PORT HTTP_PORT" "tcp $RELAY_PORT RELAY_PORT"; do
  read -r proto port var <<<"$probe"
  port_free "$proto" "$BIND" "$port" || die "$proto port $port on $BIND is taken: set $var to another port"
done
mkdir -p "$LOGS"

# --- 2. database, user and devices ----------------------------------------------
ISSUER=
if [ -n "${SUPABASE_URL:-}" ]; then
  log "using the Supabase project at $SUPABASE_URL (migrations: supabase link && supabase db push)"
  SUPABASE_URL=${SUPABASE_URL%/}
  [ -n "${SUPABASE_SERVICE_KEY:-}" ] || [ -n "${DATABASE_URL:-}" ] || die "SUPABASE_SERVICE_KEY (or DATABASE_URL) is required with SUPABASE_URL"
  [ -n "${SUPABASE_ANON_KEY:-}" ] || [ -n "${DATABASE_URL:-}" ] || die "SUPABASE_ANON_KEY (or DATABASE_URL) is required with SUPABASE_URL: the relay checks device access with it"
  ISSUER="$SUPABASE_URL/auth/v1"
  JWT_SECRET=${SUPABASE_JWT_SECRET:-}
  USER_ID=${DEV_USER_ID:-}
  if [ -n "$USER_ID" ] && [ -n "${SUPABASE_SERVICE_KEY:-}" ]; then
    rows=$(python3 -c 'import json,sys; n,p,u=int(sys.argv[1]),sys.argv[2],sys.argv[3]; print(json.dumps([{"devid":"%s-%04d"%(p,i),"owner_id":u,"name":"simulated %d"%i} for i in range(1,n+1)]))' "$DEVICES" "$PREFIX" "$USER_ID")
    auth=()
    # sb_secret_ keys are not JWTs: apikey only (docs/pitfalls.md#postgrest-go); legacy keys go in both.
    [[ "$SUPABASE_SERVICE_KEY" == sb_* ]] || auth=(-H "Authorization: Bearer $SUPABASE_SERVICE_KEY")
    curl -fsS -o /dev/null -X POST "$SUPABASE_URL/rest/v1/devices?on_conflict=devid" \
      -H "apikey: $SUPABASE_SERVICE_KEY" "${auth[@]}" -H "Content-Type: application/json" \
      -H "Prefer: resolution=merge-duplicates,return=minimal" --data "$rows" ||
      die "could not give the simulated devices to DEV_USER_ID (is the schema pushed?)"
    log "devices $PREFIX-0001…$PREFIX-$(printf '%04d' "$DEVICES") now belong to user $USER_ID"
  fi
  COAP_DB_URL=${DATABASE_URL:-}
  RELAY_DB_URL=${DATABASE_URL:-}
else
  pg_start
  pg_schema
  JWT_SECRET=$(rand)
  USER_ID=$(python3 -c 'import uuid; print(uuid.uuid4())')
  psql -q -v ON_ERROR_STOP=1 "$PG_URL" -v uid="$USER_ID" -v n="$DEVICES" -v prefix="$PREFIX" <<'SQL' >/dev/null
insert into auth.users (id, email) values (:'uid', 'dev@localhost');
insert into public.devices (devid, owner_id, name)
  select format('%s-%s', :'prefix', lpad(i::text, 4, '0')), :'uid', 'simulated ' || i
  from generate_series(1, :n) as i;
SQL
  log "local user dev@localhost ($USER_ID) owns $PREFIX-0001…$PREFIX-$(printf '%04d' "$DEVICES")"
  # Local only: the superuser URL. The relay still checks access as the
  # user (set role authenticated + request.jwt.claims), so RLS decides.
  COAP_DB_URL=$PG_URL
  RELAY_DB_URL=$PG_URL
fi

TOKEN=
if [ -n "$JWT_SECRET" ] && [ -n "$USER_ID" ]; then
  # A Supabase-shaped access token (HS256, role/aud authenticated), valid
  # for 24 h. The secret goes by environment, never on a command line.
  TOKEN=$(SECRET="$JWT_SECRET" python3 - "$USER_ID" "$ISSUER" <<'PY'
import base64, hashlib, hmac, json, os, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
claims = {"sub": sys.argv[1], "role": "authenticated", "aud": "authenticated",
          "email": "dev@localhost", "iat": now, "exp": now + 86400}
if sys.argv[2]:
    claims["iss"] = sys.argv[2]
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
sig = hmac.new(os.environ["SECRET"].encode(), head.encode(), hashlib.sha256).digest()
print(head + "." + b64(sig))
PY
)
fi

# --- 3. build and start -----------------------------------------------------------
log "building coap-server, relay and the simulator"
go build -o "$RUN/coap-server" ./coap-server
go build -o "$RUN/relay" ./relay
SIMULATE=yes
if [ -f scripts/simulate/main.go ]; then
  go build -o "$RUN/simulate" ./scripts/simulate
else
  # Older checkouts have no simulator: the stack runs, send uplinks yourself.
  SIMULATE=
  log "NOTE: scripts/simulate is not in this checkout: no simulated fleet"
fi

WS_TOKEN=$(rand)
export LOG_LEVEL=${LOG_LEVEL:-info}

# start NAME [VAR=value…] [-- ARG…] runs "$RUN/NAME" with only the given
# environment (plus PATH, HOME, LOG_LEVEL: secrets stay off command lines
# and no stray variable changes its configuration), logging to $LOGS/NAME.log.
start() {
  local name=$1 envs=()
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  env -i PATH="$PATH" HOME="$HOME" LOG_LEVEL="$LOG_LEVEL" "${envs[@]}" "$RUN/$name" "$@" >"$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
}

# wait_http NAME URL: until URL answers 200, the process dies, or 30 s pass.
wait_http() {
  local name=$1 url=$2 pid=${PIDS[-1]} deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOGS/$name.log" >&2; die "$name exited at start (log above)"; }
    [ $SECONDS -lt $deadline ] || die "$name is not ready after 30 s: see $LOGS/$name.log"
    sleep 0.2
  done
}

# The embedded NATS JetStream store lives with the rest of this run (the
# database is throwaway too); set DATA_DIR to keep it across runs.
coap_env=(COAP_ADDR="$BIND:$COAP_PORT" HTTP_ADDR="$BIND:$HTTP_PORT" WS_TOKEN="$WS_TOKEN" DATA_DIR="${DATA_DIR:-$RUN/data}")
[ -n "${COAP_DB_URL:-}" ] && coap_env+=(DATABASE_URL="$COAP_DB_URL")
[ -n "${SUPABASE_URL:-}" ] && coap_env+=(SUPABASE_URL="$SUPABASE_URL" SUPABASE_SERVICE_KEY="${SUPABASE_SERVICE_KEY:-}")
start coap-server "${coap_env[@]}"
wait_http coap-server "http://127.0.0.1:$HTTP_PORT/readyz"

relay_env=(HTTP_ADDR="$BIND:$RELAY_PORT" UPSTREAM_URL="ws://127.0.0.1:$HTTP_PORT/ws" UPSTREAM_TOKEN="$WS_TOKEN")
[ -n "$JWT_SECRET" ] && relay_env+=(SUPABASE_JWT_SECRET="$JWT_SECRET")
[ -n "${RELAY_DB_URL:-}" ] && relay_env+=(DATABASE_URL="$RELAY_DB_URL")
[ -n "${SUPABASE_URL:-}" ] && relay_env+=(SUPABASE_URL="$SUPABASE_URL" SUPABASE_ANON_KEY="${SUPABASE_ANON_KEY:-}")
[ -n "${ALLOWED_ORIGINS:-}" ] && relay_env+=(ALLOWED_ORIGINS="$ALLOWED_ORIGINS")
start relay "${relay_env[@]}"
wait_http relay "http://127.0.0.1:$RELAY_PORT/healthz"

if [ -n "$SIMULATE" ]; then
  start simulate -- -addr "127.0.0.1:$COAP_PORT" -devices "$DEVICES" -rate "$RATE" -duration 0 -prefix "$PREFIX"
fi

# --- 4. what to try -----------------------------------------------------------------
page="http://127.0.0.1:$RELAY_PORT/?deviceId=$PREFIX-0001"
cat <<EOF

  nbiot-live is running.

  Live Logs:   $page${TOKEN:+&access_token=$TOKEN}
$(if [ -z "$TOKEN" ]; then echo "               (no token minted: sign in on the page with a user's access token)"; else echo "               (signed in as the local user dev@localhost; the token is for this machine only)"; fi)

  coap-server  coap://$BIND:$COAP_PORT/uplink   http://127.0.0.1:9090/metrics (METRICS_ADDR)
  relay        http://127.0.0.1:$RELAY_PORT/   http://127.0.0.1:9091/metrics
  simulator    $(if [ -n "$SIMULATE" ]; then echo "$DEVICES devices, $RATE uplinks/s in total ($PREFIX-0001…)"; else echo "none (scripts/simulate missing)"; fi)
  logs         $LOGS/{coap-server,relay,simulate}.log
$(if [ -n "${PG_URL:-}" ]; then echo "  database     psql '$PG_URL'"; fi)

  Try:
  - open $PREFIX-0002 from the device box, or a device you do not own (NOPE) for the 403;
  - Sign out, and the page asks for a token; paste the one above to sign in again;
  - counters:  curl -s http://127.0.0.1:9090/metrics | grep ^nbiot_
$(if [ -n "${PG_URL:-}" ]; then echo "  - stored rows:  psql '$PG_URL' -c 'select devid, uplink_count, received_at from activity order by id desc limit 5'"; fi)

  Ctrl-C stops everything and removes the database.
EOF

# Stop when the user presses Ctrl-C or when any part dies.
set +e
wait -n "${PIDS[@]}"
log "a process exited; stopping (see $LOGS)"
