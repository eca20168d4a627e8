#!/usr/bin/env python3
"""Helper of scripts/bench.sh (Python 3.11, stdlib only).

  bench_report.py sample --server PID --out FILE --log FILE [--interval S] [--timeout S] -- CMD...
      Runs CMD (a sharedclient) and samples /proc/<pid>/status of the server and of CMD
      every --interval seconds while it runs. Writes "key value" lines to --out:
      elapsed_us, rc, samples, and for server/client the peaks of Rss-RssShmem,
      RssShmem and Rss (KiB), plus the client's last VmHWM. Exits with CMD's status
      (124 if it ran past --timeout and was killed).

  bench_report.py report --results FILE [--json FILE]
      Reads the tab-separated results bench.sh wrote and prints one aligned table
      (medians with min..max of both sides, median of per-run ratios); with --json also
      writes them as JSON.
      Lines: M key value | S key run value | R case metric unit better sxkey cmpname cmpref
      where cmpref is "key:<key>", "const:<number>" or "-".

  bench_report.py tree --out DIR --files N [--dirs D] [--depth K] [--sizes spread|empty] [--seed S]
      Makes a folder tree at DIR (which must not exist), the same for the same arguments:
      D folders (DIR included) nested up to K levels below DIR, every folder holding at
      least one file, N files with distinct pseudo-random contents, modes (0644 mostly,
      some 0755, 0600, 0640, 0444) and mtimes (whole seconds and nanoseconds). Sizes
      "spread": 0 B .. 64 KiB, about 85% under 8 KiB; "empty": every file 0 B. Prints
      one "files dirs bytes depth fingerprint" line (sha256 of names, modes, sizes,
      mtimes and contents, first 16 hex digits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time


# ---------------------------------------------------------------- sample


def read_status(pid: int) -> dict[str, int] | None:
    """The kB fields of /proc/<pid>/status we need, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssShmem", "RssAnon", "RssFile", "VmHWM"):
            try:
                fields[key] = int(rest.split()[0])
            except (IndexError, ValueError):
                pass
    return fields if "VmRSS" in fields else None  # a zombie has no VmRSS


class Peak:
    def __init__(self) -> None:
        self.private = 0  # Rss - RssShmem
        self.shmem = 0
        self.rss = 0
        self.hwm = 0
        self.seen = 0

    def add(self, fields: dict[str, int] | None) -> None:
        if not fields:
            return
        rss, shmem = fields.get("VmRSS", 0), fields.get("RssShmem", 0)
        self.private = max(self.private, rss - shmem)
        self.shmem = max(self.shmem, shmem)
        self.rss = max(self.rss, rss)
        self.hwm = max(self.hwm, fields.get("VmHWM", 0))
        self.seen += 1


def cmd_sample(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command and args.command[0] == "--" else args.command
    if not command:
        print("bench_report.py sample: no command", file=sys.stderr)
        return 2
    server, client = Peak(), Peak()
    with open(args.log, "wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = start + args.timeout
        timed_out = False
        while True:
            server.add(read_status(args.server))
            client.add(read_status(proc.pid))
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                timed_out = True
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                break
            time.sleep(args.interval)
        rc = proc.wait()
        elapsed_us = int((time.monotonic() - start) * 1e6)
    if timed_out:
        rc = 124
    with open(args.out, "w") as out:
        out.write(f"elapsed_us {elapsed_us}\nrc {rc}\nsamples {client.seen}\n")
        for name, peak in (("server", server), ("client", client)):
            out.write(f"{name}_private_kib {peak.private}\n{name}_shmem_kib {peak.shmem}\n")
            out.write(f"{name}_rss_kib {peak.rss}\n{name}_hwm_kib {peak.hwm}\n")
    return rc if rc >= 0 else 128 - rc


# ---------------------------------------------------------------- report


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("MB/s", "files/s"):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"
    if unit == "us":
        return f"{value:.2f}"
    if unit == "%":
        return f"{value:.3f}"
    if unit == "MiB":
        return f"{value:.1f}"
    if unit == "/s":
        return f"{value:.1f}"
    return f"{value:.3g}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"


def rounded(value):
    """Floats to 6 significant digits, recursively (the JSON shows no float noise)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def cmd_report(args: argparse.Namespace) -> int:
    meta: dict[str, str] = {}
    samples: dict[str, dict[int, float]] = {}
    rows: list[list[str]] = []
    with open(args.results) as f:
        for raw in f:
            parts = raw.rstrip("\n").split("\t")
            if parts[0] == "M" and len(parts) == 3:
                meta[parts[1]] = parts[2]
            elif parts[0] == "S" and len(parts) == 4:
                samples.setdefault(parts[1], {})[int(parts[2])] = float(parts[3])
            elif parts[0] == "R" and len(parts) == 8:
                rows.append(parts[1:])
            elif parts[0]:
                print(f"bench_report.py: bad line: {raw!r}", file=sys.stderr)
                return 1

    rows.sort(key=lambda r: int(r[0].split()[0]) if r[0].split()[0].isdigit() else 99)  # stable
    results = []
    for case, metric, unit, better, sxkey, cmpname, cmpref in rows:
        sx = samples.get(sxkey, {})
        if not sx:
            continue
        sx_runs = [sx[r] for r in sorted(sx)]
        sx_median = statistics.median(sx_runs)
        cmp_runs: list[float] = []
        cmp_value: float | None = None
        ratio: float | None = None
        if cmpref.startswith("key:"):
            cmp = samples.get(cmpref[4:], {})
            cmp_runs = [cmp[r] for r in sorted(cmp)]
            if cmp_runs:
                cmp_value = statistics.median(cmp_runs)
                pairs = [sx[r] / cmp[r] for r in sorted(sx) if r in cmp and cmp[r] != 0]
                ratio = statistics.median(pairs) if pairs else None
        elif cmpref.startswith("const:"):
            cmp_value = float(cmpref[6:])
            ratio = sx_median / cmp_value if cmp_value else None
        results.append(
            {
                "case": case,
                "metric": metric,
                "unit": unit,
                "better": better,
                "sharedxfer": sx_median,
                "comparison": None if cmpname == "-" else cmpname,
                "comparison_value": cmp_value,
                "ratio": ratio,
                "ratio_definition": "median over runs of sharedxfer/comparison (paired by run)"
                if cmpref.startswith("key:")
                else ("median sharedxfer / comparison" if ratio is not None else None),
                "runs": len(sx_runs),
                "sharedxfer_runs": sx_runs,
                "comparison_runs": cmp_runs,
                "sharedxfer_min": min(sx_runs),
                "sharedxfer_max": max(sx_runs),
                "comparison_min": min(cmp_runs) if cmp_runs else None,
                "comparison_max": max(cmp_runs) if cmp_runs else None,
            }
        )

    header = ["case", "metric", "unit", "sharedxfer", "(min..max)", "comparison", "value", "(min..max)", "ratio",
              "better", "runs"]
    table = [header]
    for r in results:
        spread = "" if r["runs"] < 2 else f"{fmt(r['sharedxfer_min'], r['unit'])}..{fmt(r['sharedxfer_max'], r['unit'])}"
        cmp_spread = (
            ""
            if len(r["comparison_runs"]) < 2
            else f"{fmt(r['comparison_min'], r['unit'])}..{fmt(r['comparison_max'], r['unit'])}"
        )
        table.append(
            [
                r["case"],
                r["metric"],
                r["unit"],
                fmt(r["sharedxfer"], r["unit"]),
                spread,
                r["comparison"] or "-",
                fmt(r["comparison_value"], r["unit"]),
                cmp_spread,
                fmt_ratio(r["ratio"]),
                r["better"],
                str(r["runs"]),
            ]
        )
    numeric = {3, 4, 6, 7, 8, 10}
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for n, row in enumerate(table):
        cells = [c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    print("\n".join(lines))
    print(
        "\nratio = sharedxfer / comparison (for paired cases: the median of the per-run ratios, runs\n"
        "alternated A B B A ...); 'better' says which direction is good for sharedxfer's figure.\n"
        "MB/s = 10^6 bytes per second, wall time from starting the command until it exits."
    )

    if args.json:
        document = {"machine": {k[8:]: v for k, v in meta.items() if k.startswith("machine.")},
                    "settings": {k[9:]: v for k, v in meta.items() if k.startswith("settings.")},
                    "notes": [v for k, v in sorted(meta.items()) if k.startswith("note.")],
                    "results": results}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rounded(document), f, indent=2)
            f.write("\n")
        os.replace(tmp, args.json)
    return 0

# ---------------------------------------------------------------- tree


def cmd_tree(args: argparse.Namespace) -> int:
    if args.files < args.dirs or args.dirs < 1 or args.depth < 0:
        print("bench_report.py tree: needs files >= dirs >= 1 and depth >= 0", file=sys.stderr)
        return 2
    if args.dirs > 1 and args.depth == 0:
        print("bench_report.py tree: more than one folder needs depth >= 1", file=sys.stderr)
        return 2
    rng = random.Random(f"sxbench-tree-{args.seed}")
    # Folders: each new one goes under a random earlier one that is not yet at the depth
    # limit, so the tree gets both wide and deep parts.
    dirs: list[tuple[str, int]] = [("", 0)]
    for i in range(1, args.dirs):
        parent, level = rng.choice([d for d in dirs if d[1] < args.depth])
        name = f"dir {i:03d}" if i % 17 == 0 else f"d{i:03d}"
        dirs.append((os.path.join(parent, name), level + 1))
    os.mkdir(args.out)
    for rel, _ in dirs[1:]:
        os.mkdir(os.path.join(args.out, rel))
    exts = [".txt", ".c", ".h", ".json", ".png", "", ".md", ".tar.gz"]
    fingerprint = hashlib.sha256()
    total = 0
    records = []
    for i in range(args.files):
        parent = dirs[i][0] if i < len(dirs) else rng.choice(dirs)[0]
        rel = os.path.join(parent, f"f{i:05d}{rng.choice(exts)}")
        if args.sizes == "empty":
            size = 0
        else:
            r = rng.random()
            if r < 0.02:
                size = 0
            elif r < 0.85:
                size = rng.randint(1, 8191)
            elif r < 0.97:
                size = rng.randint(8192, 32767)
            else:
                size = rng.randint(32768, 65536)
        r = rng.random()
        mode = 0o644 if r < 0.80 else 0o755 if r < 0.90 else 0o600 if r < 0.95 else 0o640 if r < 0.98 else 0o444
        mtime_ns = (1_500_000_000 + rng.randrange(200_000_000)) * 10**9 + (
            0 if rng.random() < 0.3 else rng.randrange(10**9)
        )
        data = rng.randbytes(size)
        path = os.path.join(args.out, rel)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        total += size
        records.append((rel, mode, size, mtime_ns, hashlib.sha256(data).hexdigest()))
    dir_modes = {rel: (0o755 if rng.random() < 0.85 else rng.choice([0o750, 0o700])) for rel, _ in dirs[1:]}
    for rel, mode in dir_modes.items():
        os.chmod(os.path.join(args.out, rel), mode)
    for rec in sorted(records) + sorted(("D", rel, mode) for rel, mode in dir_modes.items()):
        fingerprint.update(repr(rec).encode())
    depth = max(level for _, level in dirs)
    print(f"{args.files} {args.dirs} {total} {depth} {fingerprint.hexdigest()[:16]}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--server", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--interval", type=float, default=0.02)
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("command", nargs=argparse.REMAINDER)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--json")
    t = sub.add_parser("tree")
    t.add_argument("--out", required=True)
    t.add_argument("--files", type=int, required=True)
    t.add_argument("--dirs", type=int, default=1)
    t.add_argument("--depth", type=int, default=4)
    t.add_argument("--sizes", choices=("spread", "empty"), default="spread")
    t.add_argument("--seed", default="1")
    args = parser.parse_args()
    return {"sample": cmd_sample, "report": cmd_report, "tree": cmd_tree}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
