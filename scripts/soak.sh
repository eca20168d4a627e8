#!/usr/bin/env bash
# Soak: thousands of streams in repeated client runs of mixed sizes, about one client
# in ten killed with SIGKILL at a random moment. At the end: every published file is
# byte-identical to its source, no temporary files remain, the allocator is back to
# one free hole (read from `sharedclient --status --json`), no stream lock files are
# left beyond the one on offer, and the server's private memory did not grow.
#
# Usage: scripts/soak.sh [--rounds N] [--clients C] [--ids-per-client K] [--debug]
# Defaults: 30 rounds x 4 clients x 25 ids = 3,000 streams (about 20 s here).
# --debug uses the debug binaries `cargo test` already built (CI runs a short soak).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=30 clients=4 per_client=25 profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --ids-per-client) per_client=$2; shift 2 ;;
    --debug) profile=debug; shift ;;
    -h | --help) sed -n '2,/^set -/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--rounds N] [--clients C] [--ids-per-client K] [--debug]" >&2; exit 2 ;;
  esac
done

if [ "$profile" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
bin=$PWD/target/$profile
# Files live on ordinary disk: only the 16 MiB segment needs /dev/shm.
work=$(mktemp -d "${TMPDIR:-/tmp}/sxsoak.XXXXXX")
name=sxsoak-$$
mkdir -p "$work/src" "$work/out"
server=
cleanup() {
  [ -n "$server" ] && kill -INT "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Mixed sizes: many small files, some around a chunk, a few larger than a ring.
nfiles=$((clients * per_client))
sizes=(0 1 100 4095 4096 4097 65536 300000 1048576 3000000)
echo "soak: making $nfiles source files"
{
  echo '<streams>'
  for i in $(seq 1 "$nfiles"); do
    size=${sizes[$((i % ${#sizes[@]}))]}
    [ $((i % 17)) -eq 0 ] && size=$((8 * 1048576 + i))
    head -c "$size" /dev/urandom > "$work/src/f$i.bin"
    echo "  <stream id=\"$i\" file=\"src/f$i.bin\" />"
  done
  echo '</streams>'
} > "$work/options.xml"

"$bin/sharedserver" "$work/out" --name "$name" --size 16M --idle-timeout 5 -q > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 200); do grep -q "ready on segment" "$work/server.log" && break; sleep 0.05; done
grep -q "ready on segment" "$work/server.log" || { cat "$work/server.log"; echo "soak: server did not start" >&2; exit 1; }

private_kib() { awk '/^RssAnon|^RssFile/ {sum += $2} END {print sum}' "/proc/$1/status"; }

streams=0 killed=0 published=0 failures=0
baseline=
for round in $(seq 1 "$rounds"); do
  rm -rf "$work/out"/*
  mapfile -t order < <(seq 1 "$nfiles" | shuf)
  pids=() victims=()
  for c in $(seq 0 $((clients - 1))); do
    ids=("${order[@]:$((c * per_client)):$per_client}")
    "$bin/sharedclient" --name "$name" --config "$work/options.xml" -q -j 4 "${ids[@]}" \
      > "$work/client-$c.log" 2>&1 &
    pids+=($!)
    streams=$((streams + per_client))
    if [ $((RANDOM % 10)) -eq 0 ]; then victims+=($!); fi
  done
  for victim in "${victims[@]}"; do
    sleep "0.0$((RANDOM % 100))"
    kill -KILL "$victim" 2>/dev/null && killed=$((killed + 1)) || true
  done
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    if ! wait "$pid"; then
      if [[ " ${victims[*]} " != *" $pid "* ]]; then
        echo "soak: round $round: client $i failed:" >&2; cat "$work/client-$i.log" >&2; failures=$((failures + 1))
      fi
    fi
  done
  for out in "$work/out"/*; do
    [ -e "$out" ] || continue
    case "$out" in *.part) continue ;; esac
    if cmp -s "$out" "$work/src/$(basename "$out")"; then published=$((published + 1))
    else echo "soak: round $round: $(basename "$out") differs from its source" >&2; failures=$((failures + 1)); fi
  done
  [ "$round" -eq 2 ] && baseline=$(private_kib "$server")
  printf 'soak: round %d/%d, %d streams so far, %d clients killed\n' "$round" "$rounds" "$streams" "$killed"
done

# Killed clients' streams are reclaimed within a second; wait for the segment to settle.
settled=
for _ in $(seq 1 100); do
  status=$("$bin/sharedclient" --name "$name" --status --json)
  if python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if s["records"]==1 and s["buffer_bytes"]==0 and s["holes"]==1 and s["stream_lock_files"]==1 else 1)' <<<"$status"; then
    settled=yes; break
  fi
  sleep 0.1
done
"$bin/sharedclient" --name "$name" --status
temps=$(find "$work/out" -name '*.part' | wc -l)
final=$(private_kib "$server")
growth=$((final - baseline))

echo "soak: $streams streams, $killed clients killed, $published files published and verified"
echo "soak: server private memory after round 2: ${baseline} KiB, at the end: ${final} KiB (growth ${growth} KiB)"
status=0
[ "$failures" -eq 0 ] || { echo "soak: FAIL: $failures failure(s)" >&2; status=1; }
[ -n "$settled" ] || { echo "soak: FAIL: the segment did not return to one hole / one record" >&2; status=1; }
[ "$temps" -eq 0 ] || { echo "soak: FAIL: $temps temporary file(s) left" >&2; status=1; }
[ "$growth" -lt 4096 ] || { echo "soak: FAIL: server memory grew by $growth KiB" >&2; status=1; }
[ "$status" -eq 0 ] && echo "soak: OK"
exit $status
