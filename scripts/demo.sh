#!/usr/bin/env bash
# The main job, end to end: build, start a server, send every stream of the shipped
# options.xml with one client, check each file arrived byte-identical, stop the server.
# Usage: scripts/demo.sh            (output goes to ./received, emptied first)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release
name="sharedxfer-demo-$$"
out=received
rm -rf "$out"
log=$(mktemp)
"$bin/sharedserver" --name "$name" "$out" >"$log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -f "$log"' EXIT

for _ in $(seq 1 200); do
  grep -q "ready on segment" "$log" && break
  kill -0 $server 2>/dev/null || { cat "$log"; echo "demo: the server did not start" >&2; exit 1; }
  sleep 0.05
done
cat "$log"

ids=$(grep -o 'stream id="[0-9]*"' options.xml | grep -o '[0-9]*' | tr '\n' ' ')
echo "demo: sharedclient $ids"
"$bin/sharedclient" --name "$name" $ids

status=0
while IFS= read -r src; do
  dst="$out/$(basename "$src")"
  if cmp -s "$src" "$dst"; then echo "demo: ok   $dst"; else echo "demo: DIFF $dst" >&2; status=1; fi
done < <(grep -o 'file="[^"]*"' options.xml | sed 's/^file="//; s/"$//')

kill -INT $server; wait $server || true
trap - EXIT
echo "--- server log ---"; cat "$log"; rm -f "$log"
exit $status
