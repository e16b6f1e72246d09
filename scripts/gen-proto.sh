#!/usr/bin/env bash
# Regenerates proto/nbiot/v1/nbiot.pb.go from nbiot.proto and lints the schema.
# buf is pinned in scripts/lib/common.sh (BUF_VERSION, the prebuilt binary from
# npm's @bufbuild/buf, cached in .cache/buf); protoc-gen-go is pinned by go.mod
# (google.golang.org/protobuf) and run from the module cache (buf.gen.yaml).
#
#   scripts/gen-proto.sh          lint and regenerate
#   scripts/gen-proto.sh --check  lint and fail if the committed code is stale
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$ROOT"
buf_cli
buf lint
if [ "${1:-}" = --check ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  buf generate -o "$out"
  diff -u proto/nbiot/v1/nbiot.pb.go "$out/proto/nbiot/v1/nbiot.pb.go" || {
    echo "proto/nbiot/v1/nbiot.pb.go is stale: run scripts/gen-proto.sh" >&2
    exit 1
  }
else
  buf generate
fi
