#!/usr/bin/env bash
# Regenerates proto/nbiot/v1/nbiot.pb.go from nbiot.proto and lints the schema.
# buf is pinned here; protoc-gen-go is pinned by go.mod (google.golang.org/protobuf).
#
#   scripts/gen-proto.sh          lint and regenerate
#   scripts/gen-proto.sh --check  lint and fail if the committed code is stale
set -euo pipefail
cd "$(dirname "$0")/.."
BUF="go run github.com/bufbuild/buf/cmd/buf@v1.75.0"
$BUF lint
if [ "${1:-}" = --check ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  $BUF generate -o "$out"
  diff -u proto/nbiot/v1/nbiot.pb.go "$out/proto/nbiot/v1/nbiot.pb.go" || {
    echo "proto/nbiot/v1/nbiot.pb.go is stale: run scripts/gen-proto.sh" >&2
    exit 1
  }
else
  $BUF generate
fi
