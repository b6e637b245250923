"""The performance report: runs the benches, then writes docs/perf-report.md
and its charts (docs/perf/*.svg) from what they measured.

scripts/perf-report is the entry point (it makes sure the venv has
matplotlib, then runs this). The benches write their figures as JSON lines
(`--json PATH`, one object per measured path or case, with the command); this
script keeps every line of a run under .cache/perf-runs/<run>/, then turns
them into the report, so `--from` can rebuild a report from a run without
measuring again. Every figure is printed next to the machine and the command
that measured it, and the report says which of the issue's targets each
figure meets: the benches never assert a time, so this is where a target is
checked, as a statement in the report.

The hand-written analysis stays in docs/performance.md; this file is only
ever regenerated.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SWEEP = "0.1,0.25,0.5,0.75,0.9,1.0"

# (name, what it measures, script, arguments of the full run, of --quick).
# The full run's sizes are docs/performance.md's; --quick's are small enough
# to check the whole chain in a few minutes, not to quote.
STEPS = [
    (
        "produce",
        "produce: pass-through, tag-only, dedup 0 % / 30 %, tansu proxy; load sweep",
        "scripts/bench",
        ["--paths", "direct,idemgate,tansu-proxy,idemgate-observe,idemgate-dedup,direct-30,idemgate-dedup-30",
         "--compression", "none", "--sweep", SWEEP, "--rounds", "3"],
        ["--paths", "direct,idemgate,tansu-proxy,idemgate-observe,idemgate-dedup,direct-30,idemgate-dedup-30",
         "--compression", "none", "--sweep", SWEEP, "--records", "30000", "--rounds", "1"],
    ),
    (
        "produce-codecs",
        "produce with lz4 and zstd: pass-through, tag-only, dedup 0 % / 30 %",
        "scripts/bench",
        ["--paths", "direct,idemgate,idemgate-observe,idemgate-dedup,direct-30,idemgate-dedup-30",
         "--compression", "lz4,zstd", "--rounds", "3"],
        ["--paths", "direct,idemgate,idemgate-observe,idemgate-dedup,direct-30,idemgate-dedup-30",
         "--compression", "lz4,zstd", "--records", "30000", "--rounds", "1"],
    ),
    (
        "fetch",
        "consume: pass-through and fetch dedup",
        "scripts/bench-fetch",
        ["--rounds", "3"],
        ["--records", "30000", "--rounds", "1"],
    ),
    (
        "quota",
        "quota accuracy and the cost of accounting",
        "scripts/bench-quota",
        ["--rounds", "5", "--records", "40000"],
        ["--rounds", "1", "--records", "10000"],
    ),
    (
        "window",
        "window memory, disk, restart; the dedup path in process",
        "scripts/bench-window",
        [],
        ["--keys", "100000,1000000", "--records", "50000", "--rounds", "1"],
    ),
]

# What `cargo bench` builds for the steps, built before any is timed.
BUILDS = [
    ["cargo", "bench", "--locked", "--features", "rdkafka/zstd", "--bench", "produce",
     "--bench", "fetch", "--no-run"],
    ["cargo", "bench", "--locked", "--bench", "quota", "--bench", "window", "--no-run"],
]

# Paths as the report names them, in the order its tables and charts show them.
PATH_LABELS = {
    "direct": "direct",
    "idemgate": "idemgate pass-through",
    "idemgate-observe": "idemgate tag-only (observe)",
    "idemgate-dedup": "idemgate dedup",
    "tansu-proxy": "tansu proxy",
    "direct-30": "direct, 30 % replays",
    "idemgate-dedup-30": "idemgate dedup, 30 % replays",
}
PATH_ORDER = list(PATH_LABELS)
COLORS = {
    "direct": "#222222",
    "idemgate": "#1f77b4",
    "idemgate-observe": "#2ca02c",
    "idemgate-dedup": "#d62728",
    "tansu-proxy": "#ff7f0e",
}


# === Running the benches ===


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def command_output(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine():
    """What the figures were measured on, read before the first bench."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    os_name = platform.system()
    try:
        with open("/etc/os-release") as f:
            os_name = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M).group(1)
    except (OSError, AttributeError):
        pass
    lock = (ROOT / "Cargo.lock").read_text()
    rdkafka = re.search(r'name = "rdkafka-sys"\nversion = "[^+"]*\+([^"]*)"', lock)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_name,
        "rustc": command_output("rustc", "-V"),
        "tansu": command_output(str(ROOT / ".cache/bin/tansu"), "--version"),
        "librdkafka": rdkafka.group(1) if rdkafka else "unknown",
        "commit": command_output("git", "rev-parse", "--short=12", "HEAD"),
        "commit_subject": command_output("git", "log", "-1", "--format=%s"),
        "dirty": command_output("git", "status", "--porcelain", "--untracked-files=no") != "",
    }


def run_step(run_dir, name, what, script, args):
    """Runs one bench, its output to the terminal and to <name>.log."""
    out = run_dir / f"{name}.jsonl"
    cmd = ["bash", str(ROOT / script), *args, "--json", str(out)]
    print(f"perf-report: {what}: {script} {' '.join(args)}", file=sys.stderr, flush=True)
    step = {"name": name, "command": " ".join([script, *args]), "load_before": load_average()}
    started = time.monotonic()
    with open(run_dir / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        if proc.wait() != 0:
            sys.exit(f"perf-report: {script} failed (exit {proc.returncode}); its output is in {run_dir}/{name}.log")
    step["seconds"] = round(time.monotonic() - started, 1)
    step["load_after"] = load_average()
    return step


def measure(quick):
    stamp = datetime.datetime.now(datetime.timezone.utc)
    run_dir = ROOT / ".cache/perf-runs" / (stamp.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if quick else "-full"))
    run_dir.mkdir(parents=True)
    for build in BUILDS:
        print(f"perf-report: {' '.join(build)}", file=sys.stderr, flush=True)
        subprocess.run(build, cwd=ROOT, check=True)
    meta = {
        "quick": quick,
        "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_before": load_average(),
        "steps": [],
    }
    busy = float(meta["load_before"].split()[0])
    if busy >= 1.5 and not quick:
        print(f"perf-report: load average {meta['load_before']}: other work shares this machine, and the "
              "figures will show it (the report records the load)", file=sys.stderr)
    started = time.monotonic()
    for name, what, script, full, short in STEPS:
        meta["steps"].append(run_step(run_dir, name, what, script, short if quick else full))
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["load_after"] = load_average()
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"perf-report: measured in {meta['seconds']:.0f} s; run kept in {run_dir}", file=sys.stderr)
    return run_dir


def read_run(run_dir):
    meta = json.loads((run_dir / "meta.json").read_text())
    for step in meta["steps"]:
        path = run_dir / f"{step['name']}.jsonl"
        step["rows"] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # The command as the bench recorded it (the same as the step's,
        # less --json): the one every figure of the step stands next to.
        if step["rows"]:
            step["command"] = step["rows"][0]["command"]
    return meta


# === Formatting ===


def n0(x):
    return "–" if x is None else f"{x:,.0f}"


def x3(x):
    return "–" if x is None else f"{x:.3f} ×"


def ms(x):
    return "–" if x is None else f"{x:.2f} ms"


def plus_ms(x):
    return "–" if x is None else f"{x:+.2f} ms"


def f2(x):
    return "–" if x is None else f"{x:.2f}"


def mib(x):
    return "–" if x is None else f"{x / 2**20:.1f} MiB"


def label(path):
    return PATH_LABELS.get(path, path)


def path_rank(path):
    return PATH_ORDER.index(path) if path in PATH_ORDER else len(PATH_ORDER)


class Report:
    def __init__(self, meta):
        self.meta = meta
        self.steps = {s["name"]: s for s in meta["steps"]}
        m = meta["machine"]
        self.machine = f"{m['cores']} × {m['cpu']}, {m['memory_gib']:.0f} GiB, Linux {m['kernel']}"
        self.lines = []

    def rows(self, step, kind):
        return [r for r in self.steps.get(step, {}).get("rows", []) if r["kind"] == kind]

    def w(self, text=""):
        self.lines.append(text)

    def provenance(self, *steps):
        """The line every table stands on: its command, machine, and how busy
        the machine was while it ran."""
        for name in steps:
            s = self.steps[name]
            self.w(
                f"Command: `{s['command']}` · machine: {self.machine} · took {s['seconds']:.0f} s, "
                f"load average {s['load_before']} → {s['load_after']}"
            )
            self.w()


# === Targets ===

MET, MISSED = "**met**", "**missed**"


def verdict(ok):
    return "not measured" if ok is None else (MET if ok else MISSED)


# A figure the bench could not make (a CPU time under the clock's 10 ms
# tick, say) is null in its JSON: neither met nor missed.
def at_least(x, limit):
    return None if x is None else x >= limit


def at_most(x, limit):
    return None if x is None else x <= limit


def targets(r):
    """(target, where, figure, verdict) for each target of issue 7 (and the
    window targets of issue 3 it builds on)."""
    out = []
    none = {row["path"]: row for row in r.rows("produce", "produce") if row["codec"] == "none"}
    p = none.get("idemgate")
    if p:
        ratio = p["saturation_vs_baseline"]
        out.append(("pass-through ≥ 0.9 × direct at saturation", "produce, uncompressed", x3(ratio), verdict(at_least(ratio, 0.9))))
        d = p["p99_vs_baseline_ms"]
        out.append(("pass-through p99 ≤ direct + 1 ms at half load", "produce, uncompressed",
                    f"{plus_ms(d)} ({ms(p['p99_ms'])} vs {ms(none['direct']['p99_ms'])})", verdict(at_most(d, 1.0))))
        c = p["proxy_cpu_s_per_gb"]
        out.append(("pass-through ≤ 3 CPU-s per GB", "produce, uncompressed, half load", f"{f2(c)} CPU-s/GB", verdict(at_most(c, 3.0))))
    for step, codec in (("produce", "none"), ("produce-codecs", "lz4")):
        for row in r.rows(step, "produce"):
            if row["codec"] == codec and row["path"] == "idemgate-dedup":
                v = row["proxy_records_per_cpu_s"]
                out.append(("dedup ≥ 500k records/s per core", f"whole proxy, {codec}, {row['size']} B records",
                            f"{n0(v)} /s per proxy CPU-s", verdict(at_least(v, 500_000))))
    for row in r.rows("window", "dedup_path"):
        if row["codec"] in ("none", "lz4") and row["case"] == "new, tag=true":
            v = row["records_per_thread_cpu_s"]
            out.append(("dedup ≥ 500k records/s per core", f"dedup path in process, {row['codec']}, tag written",
                        f"{n0(v)} /s per thread CPU-s", verdict(at_least(v, 500_000))))
    for row in r.rows("window", "dedup_path"):
        if row["codec"] in ("none", "lz4") and row["case"] == "new, tag=false":
            v = row["records_per_thread_cpu_s"]
            out.append(("issue 3: ≥ 1M records/s per core, no duplicate, bytes forwarded as they came",
                        f"dedup path in process, {row['codec']}, tag=false", f"{n0(v)} /s", verdict(at_least(v, 1_000_000))))
    for row in r.rows("window", "window"):
        per_m = 1e6 / row["keys"]
        added = row["rss_added_bytes"] * per_m
        restarted = row["rss_restarted_bytes"] * per_m
        out.append(("≤ 64 MiB RAM per million keys", f"window, {n0(row['keys'])} keys",
                    f"{mib(added)}/M after commits, {mib(restarted)}/M restarted",
                    verdict(max(added, restarted) <= 64 * 2**20)))
        disk = row["disk_bytes"] * per_m
        out.append(("issue 3: ≤ 48 MiB disk per million keys", f"window, {n0(row['keys'])} keys", f"{mib(disk)}/M",
                    verdict(disk <= 48 * 2**20)))
        ready = row["restart_open_s"] + row["restart_load_s"]
        limit = 0.5 + 0.15 * row["keys"] / 1e6
        out.append(("issue 3: ready ≤ 0.5 s + 0.15 s per million keys after a restart", f"window, {n0(row['keys'])} keys",
                    f"{ready:.3f} s (limit {limit:.2f} s)", verdict(ready <= limit)))
    keys = {row["keys"] for row in r.rows("window", "window")}
    for k in (1_000_000, 10_000_000):
        if k not in keys:
            out.append(("restart and memory at " + n0(k) + " keys", "window", "–", "not measured in this run"))
    return out


# === Charts ===


def charts(r, out_dir):
    """SVGs of the load sweep and of every path's saturation ratio; returns
    {name: file} for the charts drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Text stays text, and the same figures give the same bytes.
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "idemgate", "font.size": 10})
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = {}
    points = r.rows("produce", "sweep")
    title_tail = " (quick run)" if r.meta["quick"] else ""
    if points:
        paths = sorted({p["path"] for p in points}, key=path_rank)
        by = {path: sorted((p for p in points if p["path"] == path), key=lambda p: p["fraction"]) for path in paths}
        direct_rate = points[0]["direct_saturation_records_per_sec"]
        for name, field, ylabel, log in (
            ("produce-throughput.svg", "records_per_sec", "achieved records/s (thousands)", False),
            ("produce-p99.svg", "p99_ms", "p99 produce latency, ms (log scale)", True),
        ):
            fig, ax = plt.subplots(figsize=(7.5, 4.5))
            for path in paths:
                xs = [p["offered_records_per_sec"] / 1e3 for p in by[path]]
                ys = [p[field] / (1 if log else 1e3) for p in by[path]]
                # direct on top: the line every other path is read against.
                ax.plot(xs, ys, marker="o", color=COLORS.get(path), label=label(path),
                        linewidth=2.2 if path == "direct" else 1.6, zorder=3 if path == "direct" else 2)
            if not log:
                top = max(p["offered_records_per_sec"] for p in points) / 1e3
                ax.plot([0, top], [0, top], linestyle=":", color="#999999", label="offered")
            else:
                ax.set_yscale("log")
            ax.set_xlabel(f"offered load, thousand records/s (1.0 × = direct's saturation, {direct_rate / 1e3:,.0f}k/s)")
            ax.set_ylabel(ylabel)
            ax.set_title(("Throughput" if not log else "p99 latency") + " against offered load, 512 B records, acks=all"
                         + title_tail)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out_dir / name, metadata={"Date": None})
            plt.close(fig)
            drawn[name] = out_dir / name
    bars = [row for step in ("produce", "produce-codecs") for row in r.rows(step, "produce")
            if not row["path"].startswith("direct")]
    if bars:
        bars.sort(key=lambda b: (["none", "lz4", "zstd"].index(b["codec"]) if b["codec"] in ("none", "lz4", "zstd") else 9,
                                 path_rank(b["path"])))
        fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(bars) + 1.2))
        names = [f"{b['codec']}: {label(b['path'])}" for b in bars]
        values = [b["saturation_vs_baseline"] for b in bars]
        ax.barh(range(len(bars)), values, color=[COLORS.get(b["path"].removesuffix("-30"), "#888888") for b in bars],
                hatch=["//" if b["replay_pct"] else "" for b in bars], edgecolor="white")
        ax.axvline(1.0, color="#222222", linewidth=1)
        ax.axvline(0.9, color="#d62728", linestyle="--", linewidth=1, label="pass-through target 0.9 ×")
        ax.set_yticks(range(len(bars)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("saturation throughput / direct's in the same run (-30 paths: / direct-30's)")
        ax.set_title("Saturation throughput against direct" + title_tail)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "saturation-vs-direct.svg", metadata={"Date": None})
        plt.close(fig)
        drawn["saturation-vs-direct.svg"] = out_dir / "saturation-vs-direct.svg"
    return drawn


# === The report ===


def write_report(meta, out, chart_dir):
    r = Report(meta)
    m = meta["machine"]
    rel = os.path.relpath(chart_dir, out.parent)
    drawn = charts(r, chart_dir)
    w = r.w
    w("# Performance report")
    w()
    w("<!-- Generated by scripts/perf-report; edits are lost when it runs again. -->")
    w()
    if meta["quick"]:
        w("> **Quick run** (`scripts/perf-report --quick`): small sizes and one round, to check that the")
        w("> command works end to end. These figures are not the recorded performance; the full run")
        w("> (`scripts/perf-report`, on a quiet machine) replaces this file.")
        w()
    w("Every figure below was measured by one command, `scripts/perf-report" + (" --quick" if meta["quick"] else "")
      + "`,")
    w("in one sitting; each table names the bench command that measured it and the machine's load while it")
    w("ran. Ratios are against direct to the broker in the same run (the `-30` paths against direct with the")
    w("same 30 % of replays). Client, broker and proxy share the machine's cores. How the benches work, the")
    w("analysis and earlier runs: [performance.md](performance.md). Machine-readable:")
    w("[perf/results.json](perf/results.json).")
    w()
    w("| | |")
    w("|---|---|")
    w(f"| date | {meta['date']} |")
    w(f"| commit | `{m['commit']}` {m['commit_subject']}" + (" (with uncommitted changes)" if m["dirty"] else "") + " |")
    w(f"| machine | {r.machine} ({m['os']}) |")
    w(f"| toolchain | {m['rustc']}; release build (`lto = \"thin\"`) |")
    w(f"| broker | {m['tansu']} (memory storage), a fresh one for every produce run |")
    w(f"| client | librdkafka {m['librdkafka']} (rdkafka crate) |")
    w(f"| load average | {meta['load_before']} before, {meta['load_after']} after (1, 5, 15 min) |")
    w(f"| took | {meta['seconds'] / 60:.1f} min of benches, builds not counted |")
    w()

    w("## Targets")
    w()
    w("Issue 7's targets, and the window targets of issue 3 it builds on. A figure is checked here, never in a")
    w("test; a quick run's sizes are too small to judge a target by.")
    w()
    w("| target | measured on | figure | |")
    w("|---|---|---|---|")
    for t in targets(r):
        if meta["quick"]:
            # Not bold: a quick run's verdict is a check of the chain, not a result.
            t = (*t[:3], t[3].strip("*") + " (quick run)")
        w("| " + " | ".join(t) + " |")
    w()

    sweep = r.rows("produce", "sweep")
    if sweep:
        w("## Produce: throughput and p99 against offered load")
        w()
        for name in ("produce-throughput.svg", "produce-p99.svg"):
            if name in drawn:
                w(f"![{name[:-4]}]({rel}/{name})")
                w()
        direct_rate = sweep[0]["direct_saturation_records_per_sec"]
        w(f"The load paced at fractions of direct's saturation rate ({n0(direct_rate)} records/s, measured first in")
        w(f"the same run), {n0(sweep[0]['records'])} records of {sweep[0]['size']} B a run, acks=all, 3 partitions,")
        w(f"medians of {sweep[0]['rounds']} round(s); at each load the paths alternate. `vs direct`: the achieved rate")
        w("over direct's at the same load; a path that keeps up gets 1.0 and its latency shows what it adds.")
        w()
        w("| load | offered rec/s | path | achieved rec/s | vs direct | p50 | p99 | p99 vs direct | proxy CPU-s/GB |")
        w("|---|---|---|---|---|---|---|---|---|")
        for frac in sorted({p["fraction"] for p in sweep}):
            at = sorted((p for p in sweep if p["fraction"] == frac), key=lambda p: path_rank(p["path"]))
            d = next(p for p in at if p["path"] == "direct")
            for p in at:
                w(f"| {frac:.2f} × | {n0(p['offered_records_per_sec'])} | {label(p['path'])} | {n0(p['records_per_sec'])} "
                  f"| {x3(p['records_per_sec'] / d['records_per_sec'])} | {ms(p['p50_ms'])} | {ms(p['p99_ms'])} "
                  f"| {plus_ms(p['p99_ms'] - d['p99_ms']) if p is not d else '–'} | {f2(p['proxy_cpu_s_per_gb'])} |")
        w()
        r.provenance("produce")

    produce = [(step, row) for step in ("produce", "produce-codecs") for row in r.rows(step, "produce")]
    if produce:
        w("## Produce: pass-through, tag-only and dedup, at saturation and at half load")
        w()
        if "saturation-vs-direct.svg" in drawn:
            w(f"![saturation-vs-direct]({rel}/saturation-vs-direct.svg)")
            w()
        w("Saturation: records sent as fast as the client queues them. Half load: paced at half of direct's")
        w("saturation rate; p50/p99 from send to delivery report, and the proxy's CPU (user + system) per GB of")
        w("records offered, which is also CPU-ms per MB (1 CPU-s/GB at 100 MB/s is 10 % of a core); records/s per")
        w("core is records over the proxy's CPU-seconds. Paths: pass-through has no dedup rule; tag-only is one")
        w("rule in `observe` mode (every record keyed, tagged and learned, nothing dropped); dedup is one rule in")
        w("`drop` mode; `30 % replays`: chunks of 1,000 records sent again, byte for byte, once acknowledged.")
        w()
        for step in ("produce", "produce-codecs"):
            rows = [row for s, row in produce if s == step]
            for codec in dict.fromkeys(row["codec"] for row in rows):
                of = sorted((row for row in rows if row["codec"] == codec), key=lambda row: path_rank(row["path"]))
                first = of[0]
                w(f"### compression.type = {codec}")
                w()
                w(f"{n0(first['records'])} records × {first['size']} B, medians of {first['rounds']} round(s); half load "
                  f"{n0(first['half_load_records_per_sec'])} records/s.")
                w()
                w("| path | saturation rec/s | vs direct | MB/s | p50 | vs direct | p99 | vs direct "
                  "| proxy CPU-s/GB | proxy rec/s per core | replays dropped |")
                w("|---|---|---|---|---|---|---|---|---|---|---|")
                for row in of:
                    direct = row["path"] == row["baseline"]
                    w(f"| {label(row['path'])} | {n0(row['saturation_records_per_sec'])} | {x3(row['saturation_vs_baseline'])} "
                      f"| {row['saturation_mb_per_sec']:.1f} | {ms(row['p50_ms'])} "
                      f"| {'–' if direct else plus_ms(row['p50_vs_baseline_ms'])} | {ms(row['p99_ms'])} "
                      f"| {'–' if direct else plus_ms(row['p99_vs_baseline_ms'])} | {f2(row['proxy_cpu_s_per_gb'])} "
                      f"| {n0(row['proxy_records_per_cpu_s'])} | {n0(row['dropped'])} |")
                w()
            r.provenance(step)

    fetch = r.rows("fetch", "fetch")
    if fetch:
        w("## Consume: fetch dedup")
        w()
        first = fetch[0]
        w(f"One broker, filled once: {n0(first['records'])} records × {first['size']} B per log, "
          f"{first['partitions']} partitions; a case is the producer's codec and the share of the log that is")
        w("copies (`-30`: 30 %). Every path reads the whole log from offset 0; `idemgate-fetch` is a fresh proxy")
        w("with a `direction = \"fetch\"` rule (it learns every key while dropping the copies), `-reread` a second")
        w("read through it. Rates count the log's records, copies included; `vs direct` is the median of each")
        w(f"round's ratio to direct ({first['rounds']} round(s)).")
        w()
        w("| case | path | rec/s | vs direct | MB/s | first record | delivered | proxy CPU-s/GB |")
        w("|---|---|---|---|---|---|---|---|")
        for row in fetch:
            w(f"| {row['case']} | {row['path']} | {n0(row['records_per_sec'])} | {x3(row['vs_baseline'])} "
              f"| {row['mb_per_sec']:.1f} | {row['first_record_ms']:.1f} ms | {n0(row['delivered'])} "
              f"| {f2(row['proxy_cpu_s_per_gb'])} |")
        w()
        r.provenance("fetch")

    quota = r.rows("quota", "quota_pass_through")
    accuracy = r.rows("quota", "quota_accuracy")
    if quota or accuracy:
        w("## Quota accounting")
        w()
        if quota:
            first = quota[0]
            w(f"The cost of accounting for a producer no quota throttles: {n0(first['records'])} × 1 KiB records,")
            w(f"acks=all, one producer per path, interleaved, medians of {first['rounds']} round(s).")
            w()
            w("| path | MiB/s | vs direct |")
            w("|---|---|---|")
            for row in quota:
                w(f"| {row['path']} | {row['mib_per_sec']:.1f} | {x3(row['vs_baseline'])} |")
            w()
        if accuracy:
            w("Throttle accuracy: 7 s' worth of the quota pushed as fast as librdkafka can, 8 KiB records.")
            w()
            w("| quota | after the burst, by acks | /target | whole run | /target | delivery errors |")
            w("|---|---|---|---|---|---|")
            for row in accuracy:
                w(f"| {row['quota_mib_per_sec']} MiB/s | {row['after_burst_mib_per_sec']:.3f} MiB/s "
                  f"| {row['after_burst_vs_target']:.3f} | {row['whole_run_mib_per_sec']:.3f} MiB/s "
                  f"| {row['whole_run_vs_target']:.3f} | {row['delivery_errors']} |")
            w()
        r.provenance("quota")

    window = r.rows("window", "window")
    dedup = r.rows("window", "dedup_path")
    if window or dedup:
        w("## The window and the dedup path, in process")
        w()
        w("Measured in process, without a network or a broker, so there is no direct path to compare with: the")
        w("figures stand against the targets above.")
        w()
    if window:
        w("| keys | RSS added by commits, per M keys | of which the maps | RSS restarted, per M | disk, per M "
          "| restart: open + load | limit |")
        w("|---|---|---|---|---|---|---|")
        for row in window:
            per_m = 1e6 / row["keys"]
            w(f"| {n0(row['keys'])} | {mib(row['rss_added_bytes'] * per_m)} | {mib(row['memory_bytes'] * per_m)} "
              f"| {mib(row['rss_restarted_bytes'] * per_m)} | {mib(row['disk_bytes'] * per_m)} "
              f"| {row['restart_open_s']:.3f} + {row['restart_load_s']:.3f} s | {0.5 + 0.15 * row['keys'] / 1e6:.2f} s |")
        w()
    if dedup:
        first = dedup[0]
        w(f"The dedup path (`ProduceDedup`, request and response) on one thread: {n0(first['records'])} records of "
          f"{first['size']} B a case, batches of {first['batch']}, medians of {first['rounds']} round(s).")
        w()
        w("| codec | case | records/s per thread CPU-s | records/s, wall | MB in → forwarded |")
        w("|---|---|---|---|---|")
        for row in dedup:
            w(f"| {row['codec']} | {row['case']} | {n0(row['records_per_thread_cpu_s'])} | {n0(row['records_per_sec'])} "
              f"| {row['mb_in']:.1f} → {row['mb_forwarded']:.1f} |")
        w()
    if window or dedup:
        r.provenance("window")

    out.write_text("\n".join(r.lines).rstrip() + "\n")
    results = {k: v for k, v in meta.items() if k != "steps"}
    results["steps"] = meta["steps"]
    (chart_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"perf-report: wrote {out.relative_to(ROOT)}, {len(drawn)} charts and results.json in "
          f"{chart_dir.relative_to(ROOT)}/", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one round: checks the chain in minutes")
    ap.add_argument("--from", dest="source", type=Path,
                    help="build the report from this earlier run (.cache/perf-runs/...) without measuring")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/perf-report.md")
    ap.add_argument("--charts", type=Path, default=ROOT / "docs/perf")
    a = ap.parse_args()
    run_dir = a.source.resolve() if a.source else measure(a.quick)
    write_report(read_run(run_dir), a.out.resolve(), a.charts.resolve())


if __name__ == "__main__":
    main()
