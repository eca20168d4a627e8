#!/usr/bin/env bash
# Benchmark sharedxfer side by side with plain tools (cat, dd, pipes, cp) on this machine.
#
# Usage: scripts/bench.sh [--quick] [--json FILE] [--runs N] [--cases LIST]
#
#   --quick    3 runs and smaller sizes (256 MiB instead of 1 GiB, 16 MiB streams,
#              20,000 pings, 3 s idle windows, 1 GiB for the memory case, 2,000 files
#              in the tree, 2,000 empty files): about a minute
#   --json F   also write the results as JSON to F
#   --runs N   timed runs per case and side (default 5, --quick 3)
#   --cases L  run only these cases, comma-separated numbers 1-10 (e.g. 4,8,9; default
#              all); the input files of the other cases are not made (case 6 uses
#              case 4's small files for its waiting client)
#
# Builds in release mode, makes its files under /dev/shm/sxbench-$$ (tmpfs), starts one
# sharedserver (segment sxbseg-$$, 64M) for the whole run, and measures each case with
# the two sides alternated (A B B A A B ...), after one untimed warm-up round. Every
# sharedxfer run is checked right after the client exits (each output's size; content
# with cmp on the first timed run of each case; for a folder sent whole, every run: the
# tree's names, sizes, modes, mtimes and contents); a failed check fails the benchmark.
# sharedclient and the tools it is compared with (cp, scp, rsync) run under the same
# `timeout` wrapper, so both sides pay the same process start.
# Cases: 1 one big file, 2 16 streams in one client, 3 4 clients x 4 streams,
# 4 2,000 small files, 5 ping-pong latency, 6 idle CPU, 7 peak memory of a big file,
# 8 a folder tree (10,000 files, 0 B - 64 KiB, most under 8 KiB, 100 nested folders)
# sent as a folder vs cp -r, 9 a folder of 5,000 empty files vs cp -r, 10 to another
# host through a real sshd on 127.0.0.1 (sharedclient --remote): the 1 GiB file vs scp,
# the tree of case 8 vs rsync -a -e ssh and scp -r (needs sshd and rsync:
# scripts/ssh-test.sh installs them; without them case 10 is skipped, and says so).
# Exit status: 0 done, 1 a run or a check failed, 2 usage.
set -euo pipefail
export LC_ALL=C

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die_usage() { echo "bench: $*" >&2; usage >&2; exit 2; }

start_dir=$PWD
quick=0 json="" runs="" cases=1,2,3,4,5,6,7,8,9,10
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --json) (($# >= 2)) || die_usage "--json needs a FILE"; json=$2; shift ;;
    --json=*) json=${1#--json=} ;;
    --runs) (($# >= 2)) || die_usage "--runs needs a number"; runs=$2; shift ;;
    --runs=*) runs=${1#--runs=} ;;
    --cases) (($# >= 2)) || die_usage "--cases needs a LIST"; cases=$2; shift ;;
    --cases=*) cases=${1#--cases=} ;;
    -h | --help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
  shift
done
[[ -z $runs || $runs =~ ^[1-9][0-9]*$ ]] || die_usage "--runs wants a whole number >= 1, not '$runs'"
[[ $cases =~ ^([1-9]|10)(,([1-9]|10))*$ ]] || die_usage "--cases wants case numbers 1-10 separated by commas (e.g. 4,8,9), not '$cases'"
[[ -z $json || $json == /* ]] || json="$start_dir/$json"
case_on=()
for c in ${cases//,/ }; do case_on[c]=1; done
cases=$(for c in "${!case_on[@]}"; do echo "$c"; done | paste -sd,) # sorted, no repeats
chosen() { local c; for c in "$@"; do [[ -n ${case_on[c]:-} ]] && return 0; done; return 1; } # CASE... : any chosen?

if ((quick)); then
  runs=${runs:-3} big_mib=256 per_mib=16 nsmall=2000 pings=20000 idle_secs=3 huge_mib=1024 ntree=2000 nempty=2000
else
  runs=${runs:-5} big_mib=1024 per_mib=64 nsmall=2000 pings=100000 idle_secs=10 huge_mib=4096 ntree=10000 nempty=5000
fi
segsize=64M segsize_mib=64 small_jobs=8 tree_dirs=100 tree_depth=4 tree_jobs=4 timeout_s=300 wait_secs=$((idle_secs / 2 > 2 ? idle_secs / 2 : 2))

cd "$(dirname "$0")/.."
root=$PWD
bin=$root/target/release
report=$root/scripts/bench_report.py
T=/dev/shm/sxbench-$$   # the segment gets a different name: it lives at /dev/shm/<name> too
seg=sxbseg-$$
res=$T/results.tsv
server=""
bg_pids=()
bench_start=${EPOCHREALTIME/./}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${bg_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  if [[ -n $server ]] && kill -0 "$server" 2>/dev/null; then
    kill -CONT "$server" 2>/dev/null || true
    kill -INT "$server" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$T"
  # The server removes these on SIGINT; only a killed one leaves them (the name is ours).
  rm -rf "/dev/shm/$seg" "/dev/shm/$seg.locks"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

fail() { # MESSAGE [LOG]...
  echo "bench: FAILED: $1" >&2
  shift
  local log
  for log in "$@"; do
    [[ -s $log ]] && { echo "--- $log (last 20 lines) ---" >&2; tail -n 20 "$log" >&2; }
  done
  exit 1
}
say() { echo "bench: $*" >&2; }
meta() { printf 'M\t%s\t%s\n' "$1" "$2" >>"$res"; }
sample() { # KEY RUN VALUE
  [[ $3 =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || fail "internal: bad value '$3' for $1 (run $2)"
  printf 'S\t%s\t%s\t%s\n' "$1" "$2" "$3" >>"$res"
}
row() { printf 'R\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$res"; } # CASE METRIC UNIT BETTER SXKEY CMPNAME CMPREF
div() { awk -v a="$1" -v b="$2" -v m="${3:-1}" 'BEGIN { printf "%.6f", a * m / b }'; }

# Runs "$@", sets elapsed_us (wall time); returns its status.
timed() {
  local t0=${EPOCHREALTIME/./} rc=0
  "$@" || rc=$?
  local t1=${EPOCHREALTIME/./}
  elapsed_us=$((t1 - t0))
  return "$rc"
}

# --------------------------------------------------------------------------- setup

say "building (cargo build --release --quiet)"
cargo build --release --quiet || fail "cargo build --release failed"
[[ -x $bin/sharedserver && -x $bin/sharedclient ]] || fail "no binaries in $bin"
! chosen 5 || command -v gcc >/dev/null || fail "gcc is needed for the pipe ping-pong"
command -v python3 >/dev/null || fail "python3 is needed for the report"

# Roughly what the chosen cases keep in /dev/shm at once, plus 512 MiB for the rest
# (segment, small files, empty files, logs).
need_mib=512
! chosen 1 || need_mib=$((need_mib + big_mib))
! chosen 2 3 || need_mib=$((need_mib + 2 * 16 * per_mib))
! chosen 7 || need_mib=$((need_mib + 2 * huge_mib))
! chosen 8 || need_mib=$((need_mib + 3 * ntree / 10))
! chosen 10 || need_mib=$((need_mib + 2 * big_mib + 3 * ntree / 10))
free_mib=$(df -Pm /dev/shm | awk 'NR == 2 { print $4 }')
((free_mib >= need_mib)) || fail "/dev/shm has $free_mib MiB free, the benchmark needs about $need_mib MiB"

mkdir -p "$T"/{out,cmp}
: >"$res"
cl=(timeout "$timeout_s" "$bin/sharedclient" --name "$seg" -q)
# The comparisons run under the same `timeout` wrapper, so both sides pay its exec.
guard=(timeout "$timeout_s")

nproc_=$(nproc)
model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
kernel=$(uname -sr)
memtotal=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
mode=$([[ $quick == 1 ]] && echo quick || echo full)
echo "machine: nproc=$nproc_, cpu='${model:-unknown}', kernel=$kernel, memory=$memtotal, /dev/shm free=${free_mib} MiB, loadavg at start=$load0"
sizes=""
! chosen 1 || sizes+=", case1 ${big_mib} MiB"
! chosen 2 3 || sizes+=", case2/3 16 x ${per_mib} MiB"
! chosen 4 || sizes+=", case4 $nsmall x 4 KiB (-j $small_jobs)"
! chosen 5 || sizes+=", case5 $pings round trips"
! chosen 6 || sizes+=", case6 ${idle_secs} s windows"
! chosen 7 || sizes+=", case7 ${huge_mib} MiB"
! chosen 8 || sizes+=", case8 $ntree files in $tree_dirs folders (-j $tree_jobs)"
! chosen 9 || sizes+=", case9 $nempty empty files (-j $tree_jobs)"
! chosen 10 || sizes+=", case10 ${big_mib} MiB and $ntree files over ssh to 127.0.0.1"
echo "settings: mode=$mode, cases=$cases, runs=$runs (+1 untimed warm-up round), segment=$segsize (server started once, default workers), sizes: ${sizes#, }"
meta machine.nproc "$nproc_"; meta machine.model "$model"; meta machine.kernel "$kernel"
meta machine.memory "$memtotal"; meta machine.loadavg_start "$load0"
meta settings.mode "$mode"; meta settings.cases "$cases"; meta settings.runs "$runs"; meta settings.segment "$segsize"
meta settings.big_mib "$big_mib"; meta settings.stream_mib "$per_mib"; meta settings.small_files "$nsmall"
meta settings.small_jobs "$small_jobs"; meta settings.pings "$pings"; meta settings.idle_secs "$idle_secs"
meta settings.huge_mib "$huge_mib"; meta settings.tree_files "$ntree"; meta settings.tree_dirs "$tree_dirs"
meta settings.tree_depth "$tree_depth"; meta settings.tree_jobs "$tree_jobs"; meta settings.empty_files "$nempty"
meta settings.tmpdir "$T"

# Pseudo-random content at GB/s (/dev/urandom is ~5 s per GiB here); distinct per seed.
make_random() { # FILE BYTES SEED
  { openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:$3" </dev/zero 2>/dev/null || true; } |
    head -c "$2" >"$1"
  (($(stat -c %s "$1") == $2)) || fail "could not make $1 (openssl enc -aes-128-ctr is used for fast random data)"
}

say "making test files in $T"
if chosen 1; then
  mkdir "$T/src1"
  make_random "$T/src1/big.bin" $((big_mib << 20)) sxbench-big
fi
# Cases 2 and 3: 16 distinct files.
if chosen 2 3; then
  mkdir "$T/src2"
  for i in $(seq -w 1 16); do make_random "$T/src2/f$i.bin" $((per_mib << 20)) "sxbench-f$i"; done
fi
# Case 4 (and case 6's waiting client): 2,000 x 4 KiB, distinct contents, cut from one random stream.
if chosen 4 6; then
  mkdir "$T/src4"
  make_random "$T/small.all" $((nsmall * 4096)) sxbench-small
  (cd "$T/src4" && split -a 4 -d -b 4096 ../small.all s) || fail "could not split the small files"
  rm -f "$T/small.all"
  (($(find "$T/src4" -type f | wc -l) == nsmall)) || fail "could not make $nsmall small files"
fi

# options files (relative paths resolve against the options file's folder)
write_config() { # FILE DIR
  local n=0 f
  {
    echo '<streams>'
    for f in $(cd "$2" && ls); do n=$((n + 1)); echo "  <stream id=\"$n\" file=\"$(basename "$2")/$f\"/>"; done
    echo '</streams>'
  } >"$1"
}
! chosen 1 || write_config "$T/c1.xml" "$T/src1"
! chosen 2 3 || write_config "$T/c2.xml" "$T/src2"
! chosen 4 6 || write_config "$T/c4.xml" "$T/src4"

# The pipe ping-pong: two processes, two pipes, 1-byte messages.
if chosen 5; then
  cat >"$T/pingpong.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}
static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 100000;
  int there[2], back[2];
  char c = 'x';
  if (n < 1 || pipe(there) || pipe(back)) { perror("pingpong"); return 1; }
  pid_t pid = fork();
  if (pid < 0) { perror("pingpong: fork"); return 1; }
  if (pid == 0) {
    close(there[1]); close(back[0]);
    for (;;) {
      ssize_t r = read(there[0], &c, 1);
      if (r != 1) _exit(r == 0 ? 0 : 1);
      if (write(back[1], &c, 1) != 1) _exit(1);
    }
  }
  close(there[0]); close(back[1]);
  double *t = malloc(n * sizeof *t);
  if (!t) return 1;
  for (long i = 0; i < n; i++) {
    double s = now_us();
    if (write(there[1], &c, 1) != 1 || read(back[0], &c, 1) != 1) { fprintf(stderr, "pingpong: pipe broke\n"); return 1; }
    t[i] = now_us() - s;
  }
  close(there[1]);
  int status;
  waitpid(pid, &status, 0);
  qsort(t, n, sizeof *t, by_value);
  /* the same percentile rule as sharedclient: index round((n-1)*q) */
  printf("pipe: %ld round trips: min %.2f us, median %.2f us, p99 %.2f us\n", n, t[0],
         t[(long)((n - 1) * 0.5 + 0.5)], t[(long)((n - 1) * 0.99 + 0.5)]);
  return 0;
}
EOF
  gcc -O2 -o "$T/pingpong" "$T/pingpong.c" || fail "gcc could not build the pipe ping-pong"
fi

say "starting sharedserver --name $seg --size $segsize"
"$bin/sharedserver" "$T/out" --name "$seg" --size "$segsize" -q >"$T/server.log" 2>&1 &
server=$!
deadline=$((${EPOCHREALTIME/./} + 10000000))
until grep -qs "ready on segment" "$T/server.log"; do
  kill -0 "$server" 2>/dev/null || fail "sharedserver exited before it was ready" "$T/server.log"
  ((${EPOCHREALTIME/./} < deadline)) || fail "sharedserver was not ready within 10 s" "$T/server.log"
  sleep 0.05
done
echo "server: $(grep -m1 "ready on segment" "$T/server.log") (pid $server)"

server_alive() { kill -0 "$server" 2>/dev/null || fail "sharedserver died ($1)" "$T/server.log"; }
clean_out() { find "$T/out" -mindepth 1 -delete; rm -rf "$T/cmp"; mkdir "$T/cmp"; }

# Checks that DIR holds SRCDIR's files with the same sizes (and contents with --cmp).
check_copy() { # LABEL SRCDIR DIR [--cmp]
  local label=$1 src=$2 dir=$3
  diff <(find "$src" -maxdepth 1 -type f -printf '%f %s\n' | sort) \
    <(find "$dir" -maxdepth 1 -type f ! -name '.*' -printf '%f %s\n' | sort) >"$T/check.diff" ||
    fail "$label: the outputs in $dir do not match the sources (name size; < missing or wrong, > unexpected)" \
      "$T/check.diff" "$T/server.log"
  local parts
  parts=$(find "$dir" -maxdepth 1 -name '.*' | wc -l)
  ((parts == 0)) || { say "NOTE: $label: $parts hidden (temporary?) file(s) left in $dir after the client exited"; meta "note.$label-leftovers" "$label: $parts hidden files left in the output folder after the client exited"; }
  if [[ ${4:-} == --cmp ]]; then
    if (($(find "$src" -maxdepth 1 -type f | wc -l) > 64)); then
      diff -rq -x '.*' "$src" "$dir" >"$T/check.diff" || fail "$label: contents differ" "$T/check.diff"
    else
      local f
      for f in "$src"/*; do
        cmp "$f" "$dir/${f##*/}" >"$T/check.diff" 2>&1 || fail "$label: ${f##*/} differs from its source" "$T/check.diff"
      done
    fi
  fi
}

# Runs one sharedxfer side: times "$@" (sharedclient args), checks exit 0 and outputs.
sx_run() { # LABEL SRCDIR RUN CLIENT-ARGS...
  local label=$1 src=$2 run=$3
  shift 3
  clean_out
  timed "${cl[@]}" "$@" >"$T/client.log" 2>&1 ||
    fail "$label: sharedclient exited $? ($(printf '%q ' "${cl[@]}" "$@" | cut -c1-300))" "$T/client.log" "$T/server.log"
  check_copy "$label" "$src" "$T/out" $([[ $run == 0 ]] && echo --cmp)
  server_alive "$label"
}

order() { # RUN SIDE... : the sides in order for this run (reversed on odd runs: A B B A A B ...)
  local run=$1
  shift
  if ((run % 2 == 0)); then echo "$@"; else local -a s=("$@") r=(); local i; for ((i = ${#s[@]} - 1; i >= 0; i--)); do r+=("${s[i]}"); done; echo "${r[@]}"; fi
}

cpu_ticks() { local s; s=$(<"/proc/$1/stat"); s=${s##*\) }; local -a f=($s); echo $((f[11] + f[12])); }
sched_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { printf "%.0f\n", s }'; }
clk_tck=$(getconf CLK_TCK)

# CPU% (utime+stime ticks of /proc/PID/stat, and ns of every thread's schedstat) and
# context switches per second of PID over SECS; records KEY.cpu, KEY.cpu_ns, KEY.wake.
idle_window() { # KEY PID SECS
  local key=$1 pid=$2 secs=$3 c0 c1 n0 n1 w0 w1 t0 t1
  c0=$(cpu_ticks "$pid"); n0=$(sched_ns "$pid"); w0=$(ctx_switches "$pid"); t0=${EPOCHREALTIME/./}
  sleep "$secs"
  c1=$(cpu_ticks "$pid"); n1=$(sched_ns "$pid"); w1=$(ctx_switches "$pid"); t1=${EPOCHREALTIME/./}
  sample "$key.cpu" 0 "$(div $((c1 - c0)) $((t1 - t0)) $((100 * 1000000 / clk_tck)))"
  sample "$key.cpu_ns" 0 "$(div $((n1 - n0)) $((t1 - t0)) 0.1)"
  sample "$key.wake" 0 "$(div $((w1 - w0)) $((t1 - t0)) 1000000)"
}

# --------------------------------------------------------------------------- case 6a

if chosen 6; then
  say "case 6: idle server CPU over ${idle_secs} s, before any traffic"
  sleep 1
  idle_window c6.before "$server" "$idle_secs"
  server_alive "idle"
fi

# --------------------------------------------------------------------------- case 1

c1_side() { # SIDE RUN : one timed run; RUN -1 is the warm-up
  local side=$1 run=$2 src=$T/src1/big.bin dst=$T/cmp/big.bin
  case $side in
    sx) sx_run "case 1 sharedxfer" "$T/src1" "$run" --config "$T/c1.xml" 1 ;;
    cat) clean_out; timed eval 'cat "$src" >"$dst"' || fail "case 1: cat failed" ;;
    dd) clean_out; timed dd if=/dev/zero of="$dst" bs=1M count="$big_mib" status=none || fail "case 1: dd failed" ;;
    pipe) clean_out; timed eval 'cat "$src" | cat >"$dst"' || fail "case 1: cat | cat failed" ;;
  esac
  [[ $side == sx ]] || (($(stat -c %s "$dst") == big_mib << 20)) || fail "case 1: $side wrote a short file"
  ((run < 0)) || sample "c1.$side" "$run" "$(div $((big_mib << 20)) "$elapsed_us")"
}
if chosen 1; then
  say "case 1: one ${big_mib} MiB file: sharedxfer vs cat, dd, cat | cat"
  for side in sx cat dd pipe; do c1_side "$side" -1; done
  for ((r = 0; r < runs; r++)); do for side in $(order "$r" sx cat dd pipe); do c1_side "$side" "$r"; done; done
  clean_out
  row "1 one ${big_mib} MiB file" "client -> server" MB/s higher c1.sx 'cat src > dst' key:c1.cat
  row "1 one ${big_mib} MiB file" "client -> server" MB/s higher c1.sx "dd of=dst bs=1M (write only)" key:c1.dd
  row "1 one ${big_mib} MiB file" "client -> server" MB/s higher c1.sx 'cat src | cat > dst' key:c1.pipe
  rm -rf "$T/src1"
fi

# --------------------------------------------------------------------------- cases 2, 3

all16=$(seq 1 16 | tr '\n' ' ')
c2_side() { # SIDE RUN
  local side=$1 run=$2
  case $side in
    sx) sx_run "case 2 sharedxfer" "$T/src2" "$run" --config "$T/c2.xml" -j 16 $all16 ;;
    cp) clean_out; timed "${guard[@]}" cp "$T"/src2/*.bin "$T/cmp/" || fail "case 2: cp failed"; check_copy "case 2 cp" "$T/src2" "$T/cmp" ;;
  esac
  ((run < 0)) || sample "c2.$side" "$run" "$(div $((16 * per_mib << 20)) "$elapsed_us")"
}
if chosen 2; then
  say "case 2: 16 streams x ${per_mib} MiB, one client (-j 16) vs one cp"
  for side in sx cp; do c2_side "$side" -1; done
  for ((r = 0; r < runs; r++)); do for side in $(order "$r" sx cp); do c2_side "$side" "$r"; done; done
  clean_out
  row "2 16 x ${per_mib} MiB, 1 client" aggregate MB/s higher c2.sx "cp 16 files dir/" key:c2.cp
fi

four_clients() {
  local pids=() i rc=0 p
  for i in 0 1 2 3; do
    "${cl[@]}" --config "$T/c2.xml" -j 4 $((4 * i + 1)) $((4 * i + 2)) $((4 * i + 3)) $((4 * i + 4)) >"$T/client$i.log" 2>&1 &
    pids+=($!)
  done
  bg_pids=("${pids[@]}")
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  bg_pids=()
  return "$rc"
}
c3_side() { # SIDE RUN
  local side=$1 run=$2
  case $side in
    sx)
      clean_out
      timed four_clients || fail "case 3: a sharedclient exited non-zero" "$T"/client{0,1,2,3}.log "$T/server.log"
      check_copy "case 3 sharedxfer" "$T/src2" "$T/out" $([[ $run == 0 ]] && echo --cmp)
      server_alive "case 3"
      ;;
    cp) clean_out; timed "${guard[@]}" cp "$T"/src2/*.bin "$T/cmp/" || fail "case 3: cp failed"; check_copy "case 3 cp" "$T/src2" "$T/cmp" ;;
  esac
  ((run < 0)) || sample "c3.$side" "$run" "$(div $((16 * per_mib << 20)) "$elapsed_us")"
}
if chosen 3; then
  say "case 3: 4 clients x 4 streams x ${per_mib} MiB at once vs one cp"
  for side in sx cp; do c3_side "$side" -1; done
  for ((r = 0; r < runs; r++)); do for side in $(order "$r" sx cp); do c3_side "$side" "$r"; done; done
  clean_out
  row "3 4 clients x 4 x ${per_mib} MiB" aggregate MB/s higher c3.sx "cp 16 files dir/" key:c3.cp
fi
rm -rf "$T/src2"

# --------------------------------------------------------------------------- case 4

all_small=$(seq 1 "$nsmall" | tr '\n' ' ')
c4_side() { # SIDE RUN
  local side=$1 run=$2
  case $side in
    sx) sx_run "case 4 sharedxfer" "$T/src4" "$run" --config "$T/c4.xml" -j "$small_jobs" $all_small ;;
    cp) clean_out; timed "${guard[@]}" cp -r "$T/src4" "$T/cmp/s" || fail "case 4: cp -r failed"; check_copy "case 4 cp -r" "$T/src4" "$T/cmp/s" ;;
  esac
  ((run < 0)) || sample "c4.$side" "$run" "$(div "$nsmall" "$elapsed_us" 1000000)"
}
if chosen 4; then
  say "case 4: $nsmall files x 4 KiB, one client (-j $small_jobs) vs cp -r"
  for side in sx cp; do c4_side "$side" -1; done
  for ((r = 0; r < runs; r++)); do for side in $(order "$r" sx cp); do c4_side "$side" "$r"; done; done
  clean_out
  row "4 $nsmall x 4 KiB files" "files/s (-j $small_jobs)" files/s higher c4.sx "cp -r dir" key:c4.cp
fi

# --------------------------------------------------------------------------- case 5

ping_re='median ([0-9.]+) us, p99 ([0-9.]+) us'
c5_side() { # SIDE RUN
  local side=$1 run=$2 count=$pings out
  ((run >= 0)) || count=$((pings / 10))
  case $side in
    sx) out=$(timeout "$timeout_s" "$bin/sharedclient" --name "$seg" --ping "$count" 2>&1) || fail "case 5: sharedclient --ping $count exited $?: $out" "$T/server.log"; server_alive "case 5" ;;
    pipe) out=$(timeout "$timeout_s" "$T/pingpong" "$count" 2>&1) || fail "case 5: pingpong exited $?: $out" ;;
  esac
  [[ $out =~ $ping_re ]] || fail "case 5: cannot read the $side ping output: $out"
  local median=${BASH_REMATCH[1]} p99=${BASH_REMATCH[2]}
  if ((run >= 0)); then sample "c5.$side.median" "$run" "$median"; sample "c5.$side.p99" "$run" "$p99"; fi
}
if chosen 5; then
  say "case 5: ping-pong, $pings round trips: sharedclient --ping vs a pipe pair"
  for side in sx pipe; do c5_side "$side" -1; done
  for ((r = 0; r < runs; r++)); do for side in $(order "$r" sx pipe); do c5_side "$side" "$r"; done; done
  row "5 ping-pong x $pings" "round trip, median" us lower c5.sx.median "pipe pair, 1 byte" key:c5.pipe.median
  row "5 ping-pong x $pings" "round trip, p99" us lower c5.sx.p99 "pipe pair, 1 byte" key:c5.pipe.p99
fi

# --------------------------------------------------------------------------- case 7

if chosen 7; then
  say "case 7: one ${huge_mib} MiB file, peak Rss-RssShmem of server and client (sampled every 20 ms)"
  mkdir -p "$T/src7"
  make_random "$T/src7/huge.bin" $((huge_mib << 20)) sxbench-huge
  write_config "$T/c7.xml" "$T/src7"
  for ((r = 0; r < runs; r++)); do
    clean_out
    rc=0
    python3 "$report" sample --server "$server" --out "$T/mem.txt" --log "$T/client.log" --interval 0.02 \
      --timeout "$timeout_s" -- "$bin/sharedclient" --name "$seg" -q --config "$T/c7.xml" 1 || rc=$?
    ((rc == 0)) || fail "case 7: sharedclient exited $rc" "$T/client.log" "$T/server.log"
    check_copy "case 7 sharedxfer" "$T/src7" "$T/out" $([[ $r == 0 ]] && echo --cmp)
    server_alive "case 7"
    declare -A m=()
    while read -r k v; do m[$k]=$v; done <"$T/mem.txt"
    sample c7.server "$r" "$(div "${m[server_private_kib]}" 1024)"
    sample c7.client "$r" "$(div "${m[client_private_kib]}" 1024)"
    sample c7.server_rss "$r" "$(div "${m[server_rss_kib]}" 1024)"
    sample c7.client_rss "$r" "$(div "${m[client_rss_kib]}" 1024)"
    sample c7.rate "$r" "$(div $((huge_mib << 20)) "${m[elapsed_us]}")"
    unset m
  done
  clean_out
  rm -rf "$T/src7"
  row "7 one ${huge_mib} MiB file" "server peak Rss-RssShmem" MiB lower c7.server "segment size" "const:$segsize_mib"
  row "7 one ${huge_mib} MiB file" "client peak Rss-RssShmem" MiB lower c7.client "segment size" "const:$segsize_mib"
  row "7 one ${huge_mib} MiB file" "server peak Rss (incl. segment)" MiB lower c7.server_rss "segment size" "const:$segsize_mib"
  row "7 one ${huge_mib} MiB file" "client peak Rss (incl. segment)" MiB lower c7.client_rss "segment size" "const:$segsize_mib"
  row "7 one ${huge_mib} MiB file" "client -> server (while sampled)" MB/s higher c7.rate - -
fi

# --------------------------------------------------------------------------- cases 8, 9

# One line per entry below DIR, sorted: type, then for files mode, size, mtime (with
# --meta) or size, and for folders the mode (with --meta); then the relative path.
# Hidden names are left out (the generator makes none; a leftover temporary file is noted).
tree_list() { # DIR [--meta]
  if [[ ${2:-} == --meta ]]; then
    find "$1" -mindepth 1 ! -name '.*' \( -type f -printf 'f %m %s %T@ %P
' -o -type d -printf 'd %m %P
' -o -printf '%y %P
' \)
  else
    find "$1" -mindepth 1 ! -name '.*' \( -type f -printf 'f %s %P
' -o -type d -printf 'd %P
' -o -printf '%y %P
' \)
  fi | sort
}

# Checks that DIR holds SRCDIR's whole tree: names, types and sizes; with --full also
# file and folder modes, file mtimes (to the nanosecond) and every file's contents.
check_tree() { # LABEL SRCDIR DIR [--full]
  local label=$1 src=$2 dir=$3 meta=""
  [[ ${4:-} == --full ]] && meta=--meta
  [[ -d $dir ]] || fail "$label: $dir was not made"
  tree_list "$src" $meta >"$T/tree.want"
  tree_list "$dir" $meta >"$T/tree.got"
  diff "$T/tree.want" "$T/tree.got" >"$T/check.diff" ||
    fail "$label: the tree in $dir does not match $src (type [mode] size [mtime] path; < missing or wrong, > unexpected; $(grep -c '^[<>]' "$T/check.diff") lines)" \
      "$T/check.diff" "$T/server.log"
  local parts
  parts=$(find "$dir" -name '.*' | wc -l)
  ((parts == 0)) || { say "NOTE: $label: $parts hidden (temporary?) file(s) left in $dir after the client exited"; meta "note.$label-leftovers" "$label: $parts hidden files left in the output tree after the client exited"; }
  if [[ -n $meta ]]; then
    diff -rq -x '.*' "$src" "$dir" >"$T/check.diff" 2>&1 || fail "$label: contents differ" "$T/check.diff"
  fi
}

tree_side() { # CASE SRCDIR COUNT SIDE RUN : sends SRCDIR as a folder, or cp -r's it
  local c=$1 src=$2 count=$3 side=$4 run=$5 base=${2##*/}
  clean_out
  case $side in
    sx)
      timed "${cl[@]}" -j "$tree_jobs" "$src" >"$T/client.log" 2>&1 ||
        fail "case $c: sharedclient exited $? ($(printf '%q ' "${cl[@]}" -j "$tree_jobs" "$src"))" "$T/client.log" "$T/server.log"
      check_tree "case $c sharedxfer" "$src" "$T/out/$base" --full
      server_alive "case $c"
      ;;
    cp)
      timed "${guard[@]}" cp -r "$src" "$T/cmp/$base" || fail "case $c: cp -r failed"
      check_tree "case $c cp -r" "$src" "$T/cmp/$base"
      ;;
  esac
  ((run < 0)) || sample "c$c.$side" "$run" "$(div "$count" "$elapsed_us" 1000000)"
}

if chosen 8; then
  mkdir -p "$T/src8"
  read -r _ _ tree_bytes tree_levels tree_fp < <(python3 "$report" tree --out "$T/src8/tree" --files "$ntree" \
    --dirs "$tree_dirs" --depth "$tree_depth" --seed 8) || fail "could not make the case 8 tree"
  [[ $tree_fp =~ ^[0-9a-f]{16}$ ]] || fail "could not make the case 8 tree"
  meta settings.tree_bytes "$tree_bytes"; meta settings.tree_fingerprint "$tree_fp"
  tree_mb=$(div "$tree_bytes" 1000000)
  say "case 8: a tree of $ntree files, $tree_dirs folders $tree_levels deep, ${tree_mb%.*} MB (fingerprint $tree_fp), sent as a folder (-j $tree_jobs) vs cp -r"
  for side in sx cp; do tree_side 8 "$T/src8/tree" "$ntree" "$side" -1; done
  for ((r = 0; r < runs; r++)); do for side in $(order "$r" sx cp); do tree_side 8 "$T/src8/tree" "$ntree" "$side" "$r"; done; done
  clean_out
  row "8 tree: $ntree files, $tree_dirs folders, ${tree_mb%.*} MB" "files/s (-j $tree_jobs)" files/s higher c8.sx "cp -r dir" key:c8.cp
  rm -rf "$T/src8"
fi

if chosen 9; then
  mkdir -p "$T/src9"
  python3 "$report" tree --out "$T/src9/empty" --files "$nempty" --dirs 1 --sizes empty --seed 9 >/dev/null ||
    fail "could not make the case 9 folder"
  say "case 9: a folder of $nempty empty files, sent as a folder (-j $tree_jobs) vs cp -r"
  for side in sx cp; do tree_side 9 "$T/src9/empty" "$nempty" "$side" -1; done
  for ((r = 0; r < runs; r++)); do for side in $(order "$r" sx cp); do tree_side 9 "$T/src9/empty" "$nempty" "$side" "$r"; done; done
  clean_out
  row "9 $nempty empty files" "files/s (-j $tree_jobs)" files/s higher c9.sx "cp -r dir" key:c9.cp
  rm -rf "$T/src9"
fi

# --------------------------------------------------------------------------- case 10

# A private sshd on 127.0.0.1 with throwaway keys; every side goes through it with the
# same ssh options (the default cipher), so only the tools differ.
start_sshd() {
  local d=$T/sshd port
  mkdir -p "$d"
  ssh-keygen -q -t ed25519 -N "" -f "$d/host_key" && ssh-keygen -q -t ed25519 -N "" -f "$d/user_key" ||
    fail "case 10: ssh-keygen failed"
  echo "environment=\"PATH=$bin:/usr/local/bin:/usr/bin:/bin\" $(cat "$d/user_key.pub")" >"$d/authorized_keys"
  chmod 600 "$d/authorized_keys"
  mkdir -p /run/sshd 2>/dev/null || true
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$d/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $d/host_key
AuthorizedKeysFile $d/authorized_keys
PidFile $d/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PermitUserEnvironment yes
Subsystem sftp internal-sftp
CONF
  /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
  sshd_pid=$!
  bg_pids+=("$sshd_pid")
  ssh_opts=(-i "$d/user_key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
  ssh_port=$port
  ssh_cmd="ssh -p $port ${ssh_opts[*]}"
  ssh_host="$(id -un)@127.0.0.1"
  local i
  for i in $(seq 1 100); do
    $ssh_cmd "$ssh_host" true 2>/dev/null && return 0
    sleep 0.1
  done
  fail "case 10: sshd did not accept a login on 127.0.0.1:$port" "$d/sshd.log"
}

ssh_side() { # KIND(big|tree) SIDE RUN
  local kind=$1 side=$2 run=$3 src dst
  clean_out
  if [[ $kind == big ]]; then src=$T/src10/big.bin; else src=$T/src10/tree; fi
  case $side in
    sx)
      timed "${cl[@]}" --remote "$ssh_host" --rsh "$ssh_cmd" "$src" >"$T/client.log" 2>&1 ||
        fail "case 10: sharedclient --remote exited $?" "$T/client.log" "$T/server.log" "$T/sshd/sshd.log"
      dst=$T/out ;;
    scp)
      timed "${guard[@]}" scp -q -r -P "$ssh_port" "${ssh_opts[@]}" "$src" "$ssh_host:$T/cmp/" >"$T/client.log" 2>&1 ||
        fail "case 10: scp failed" "$T/client.log"
      dst=$T/cmp ;;
    rsync)
      timed "${guard[@]}" rsync -a -e "$ssh_cmd" "$src" "$ssh_host:$T/cmp/" >"$T/client.log" 2>&1 || fail "case 10: rsync failed" "$T/client.log"
      dst=$T/cmp ;;
  esac
  if [[ $kind == big ]]; then
    (($(stat -c %s "$dst/big.bin" 2>/dev/null || echo 0) == big_mib << 20)) || fail "case 10: $side did not deliver big.bin whole" "$T/client.log"
    ((run != 0)) || cmp -s "$src" "$dst/big.bin" || fail "case 10: $side: big.bin differs"
    ((run < 0)) || sample "c10big.$side" "$run" "$(div $((big_mib << 20)) "$elapsed_us")"
  else
    if [[ $side == scp ]]; then check_tree "case 10 $side" "$src" "$dst/tree"; else check_tree "case 10 $side" "$src" "$dst/tree" --full; fi
    ((run < 0)) || sample "c10tree.$side" "$run" "$(div "$ntree" "$elapsed_us" 1000000)"
  fi
}

if chosen 10; then
  if [[ ! -x /usr/sbin/sshd || -z $(command -v rsync) || -z $(command -v scp) ]]; then
    say "case 10 skipped: it needs sshd, ssh, scp and rsync (scripts/ssh-test.sh installs them)"
    meta note.case10 "skipped: sshd, scp or rsync missing (scripts/ssh-test.sh installs them)"
  else
    mkdir -p "$T/src10"
    make_random "$T/src10/big.bin" $((big_mib << 20)) sxbench-ssh
    python3 "$report" tree --out "$T/src10/tree" --files "$ntree" --dirs "$tree_dirs" --depth "$tree_depth" \
      --seed 8 >/dev/null || fail "could not make the case 10 tree"
    start_sshd
    say "case 10: to another host through sshd on 127.0.0.1: one ${big_mib} MiB file vs scp and rsync, $ntree files vs rsync -a and scp -r"
    for side in sx scp rsync; do ssh_side big "$side" -1; done
    for ((r = 0; r < runs; r++)); do for side in $(order "$r" sx scp rsync); do ssh_side big "$side" "$r"; done; done
    for side in sx rsync scp; do ssh_side tree "$side" -1; done
    for ((r = 0; r < runs; r++)); do for side in $(order "$r" sx rsync scp); do ssh_side tree "$side" "$r"; done; done
    clean_out
    row "10 ssh: one ${big_mib} MiB file" "--remote via sshd" MB/s higher c10big.sx "scp" key:c10big.scp
    row "10 ssh: one ${big_mib} MiB file" "--remote via sshd" MB/s higher c10big.sx "rsync -a -e ssh" key:c10big.rsync
    row "10 ssh: tree of $ntree files" "--remote via sshd" files/s higher c10tree.sx "rsync -a -e ssh" key:c10tree.rsync
    row "10 ssh: tree of $ntree files" "--remote via sshd" files/s higher c10tree.sx "scp -r" key:c10tree.scp
    kill "$sshd_pid" 2>/dev/null || true
    rm -rf "$T/src10"
  fi
fi

# --------------------------------------------------------------------------- case 6b

if chosen 6; then
  say "case 6: idle server CPU over ${idle_secs} s, after the traffic"
  sleep 1
  idle_window c6.after "$server" "$idle_secs"
  server_alive "idle"

  # An idle waiting client: the server is SIGSTOPped, a client is started and waits for it
  # (well inside its --timeout); then the server is continued and the file must arrive.
  say "case 6: a client waiting ${wait_secs} s for a stopped server"
  clean_out
  kill -STOP "$server"
  timeout "$timeout_s" "$bin/sharedclient" --name "$seg" -q --timeout 120 --config "$T/c4.xml" 1 >"$T/client.log" 2>&1 &
  tpid=$!
  bg_pids=("$tpid")
  sleep 1
  cpid=$(cat "/proc/$tpid/task/$tpid/children" 2>/dev/null | awk '{ print $1 }')
  [[ -n $cpid ]] || { kill -CONT "$server"; fail "case 6: the waiting client is gone" "$T/client.log"; }
  idle_window c6.client "$cpid" "$wait_secs"
  kill -CONT "$server"
  rc=0
  wait "$tpid" || rc=$?
  bg_pids=()
  ((rc == 0)) || fail "case 6: the client that waited for a stopped server exited $rc" "$T/client.log" "$T/server.log"
  [[ -f $T/out/s0000 ]] && cmp -s "$T/src4/s0000" "$T/out/s0000" || fail "case 6: the waiting client's file did not arrive whole" "$T/client.log"
  server_alive "case 6"
  clean_out
  row "6 idle" "server CPU %, idle, before traffic" % lower c6.before.cpu target const:0
  row "6 idle" "server CPU %, idle, after traffic" % lower c6.after.cpu target const:0
  row "6 idle" "client CPU %, waiting for stopped server" % lower c6.client.cpu target const:0
  row "6 idle" "server CPU %, idle, before (schedstat ns)" % lower c6.before.cpu_ns target const:0
  row "6 idle" "server CPU %, idle, after (schedstat ns)" % lower c6.after.cpu_ns target const:0
  row "6 idle" "client CPU %, waiting (schedstat ns)" % lower c6.client.cpu_ns target const:0
  row "6 idle" "server context switches/s, idle, before traffic" /s lower c6.before.wake - -
  row "6 idle" "server context switches/s, idle, after traffic" /s lower c6.after.wake - -
  row "6 idle" "client context switches/s, waiting" /s lower c6.client.wake - -
fi

# --------------------------------------------------------------------------- report

load1=$(cut -d' ' -f1-3 /proc/loadavg)
meta machine.loadavg_end "$load1"
elapsed_s=$(div $((${EPOCHREALTIME/./} - bench_start)) 1000000)
meta settings.wall_seconds "$elapsed_s"
if grep -v "ready on segment" "$T/server.log" | grep -q .; then
  say "NOTE: the server printed more than its ready line (with -q):"
  grep -v "ready on segment" "$T/server.log" | head -n 20 >&2
  meta note.server-log "server printed: $(grep -v "ready on segment" "$T/server.log" | head -n 5 | tr '\n' '|')"
fi
echo
python3 "$report" report --results "$res" ${json:+--json "$json"}
echo
echo "loadavg at end: $load1; benchmark took ${elapsed_s%.*} s"
[[ -z $json ]] || echo "JSON written to $json"
