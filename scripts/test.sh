#!/usr/bin/env bash
# Runs every test: installs what the tests need (Debian's libcoap3-bin,
# postgresql, chromium; the pinned Supabase CLI), starts a throwaway
# Postgres, pushes the migrations, lints the schema, vets and runs the Go
# tests with the race detector, then fuzzes each decoder briefly.
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

apt_install libcoap3-bin chromium protobuf-compiler
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
