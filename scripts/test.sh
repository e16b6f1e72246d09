#!/usr/bin/env bash
# Runs every test: installs what the tests need when missing (Debian's
# libcoap3-bin, protobuf-compiler, nats-server, pgbouncer, curl, chromium,
# postgresql-15;
# the pinned Supabase CLI and buf from npm), starts a throwaway Postgres,
# pushes the migrations, lints the schema, vets and runs the Go tests with
# the race detector, then fuzzes each decoder briefly.
#
#   scripts/test.sh            everything (what CI runs)
#   FUZZTIME=0 scripts/test.sh skip the fuzzing pass
#
# Fuzzing uses an execution count, not a duration: Go 1.26's coordinator
# can report a spurious "context deadline exceeded" when a duration budget
# expires under CPU contention (golang/go#75804, fixed in Go 1.27).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$ROOT"

# libcoap's clients and protoc are independent peers in the CoAP and
# downlink tests; nats-server is the external JetStream for NATS_URL tests;
# pgbouncer (transaction mode) stands for Supabase's transaction pooler in
# the DATABASE_URL tests; curl is dev.sh's, which scripts/lib's test runs.
apt_install libcoap3-bin protobuf-compiler nats-server pgbouncer curl
# The page tests drive /usr/bin/chromium (relay/web). Ubuntu has no such
# package (its chromium-browser is a snap, which they do not use).
if [ ! -x /usr/bin/chromium ]; then
  case "$(distro)" in
  ubuntu*) log "WARNING: no /usr/bin/chromium: relay/web's browser tests skip (fail with CI=true). Ubuntu's Chromium is a snap; see README, Tests" ;;
  *) apt_install chromium ;;
  esac
fi
# The CoAP socket asks for a 4 MiB receive buffer, capped by the kernel at
# net.core.rmem_max (208 KiB on many systems): a junk burst then overflows
# it, and the test that a valid CON after one is answered fails.
if [ "$(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo 0)" -lt 4194304 ]; then
  if [ "$(id -u)" = 0 ] && echo 4194304 >/proc/sys/net/core/rmem_max 2>/dev/null; then
    log "net.core.rmem_max raised to 4194304 for the CoAP tests"
  else
    log "WARNING: net.core.rmem_max is under 4 MiB and cannot be raised here: TestLeanJunkBurstThenValidCON fails (sysctl -w net.core.rmem_max=4194304)"
  fi
fi
trap pg_stop EXIT
pg_start
pg_schema
export TEST_DATABASE_URL="$PG_URL"

log "schema lint (buf) and generated code check"
scripts/gen-proto.sh --check

log "go vet"
go vet ./...

log "go test -race"
go test -race -count=1 -timeout 15m ./...

FUZZTIME=${FUZZTIME:-50000x}
if [ "$FUZZTIME" != 0 ]; then
  for target in $(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do
    for fn in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$target"/*_test.go | cut -d' ' -f2); do
      log "fuzz $target $fn ($FUZZTIME)"
      go test -run '^$' -fuzz "^$fn\$" -fuzztime "$FUZZTIME" "$target"
    done
  done
fi
log "all tests passed"
