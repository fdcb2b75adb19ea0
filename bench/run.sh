#!/usr/bin/env bash
# Runs authproxy's benchmark harness on loopback: installs what it needs
# (Debian nginx, mitmproxy, wrk, nghttp2-client for h2load; ghz pinned),
# builds the proxy, the benchmark upstream and bench/load, and measures every
# contender in alternating rounds.
#   bench/run.sh                     # 3 rounds of 5 s per contender and scenario
#   bench/run.sh -rounds 5 -duration 10s -out /tmp/table.md
#   bench/run.sh -rounds 1 -scenarios h1-1,fwd-h1   # a quick look at some scenarios
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in nginx:nginx mitmdump:mitmproxy wrk:wrk h2load:nghttp2-client; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:$(go env GOPATH)/bin"
command -v ghz >/dev/null 2>&1 || go install github.com/bojand/ghz/cmd/ghz@v0.120.0
exec go run ./bench/harness "$@"
