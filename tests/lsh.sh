#!/bin/sh
# A stand-in for ssh in the tests (as rsync's test suite has lsh.sh): the first
# argument is the host, which is dropped; the rest runs here, with the freshly built
# binaries first on PATH. LSH_PIDFILE: write the command's pid there first.
# LSH_CUT=N: the command sees only the first N bytes of its input (a dropped link).
shift
PATH="${LSH_BIN:?LSH_BIN must name the folder of the built binaries}:$PATH"
export PATH
if [ -n "${LSH_PIDFILE:-}" ]; then echo $$ >"$LSH_PIDFILE"; fi
if [ -n "${LSH_CUT:-}" ]; then
  dd bs=64K count="$LSH_CUT" iflag=count_bytes status=none | "$@"
  exit $?
fi
exec "$@"
