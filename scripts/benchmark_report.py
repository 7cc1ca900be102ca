#!/usr/bin/env python3
"""Formats the results of scripts/compare-etcd.sh as docs/benchmarks.md.

Usage: benchmark_report.py WORK_DIR MACHINE VERSIONS SCALE > benchmarks.md

Everything above the analysis marker is generated; a hand-written analysis
below the marker in the existing docs/benchmarks.md is kept.
"""
import datetime
import json
import os
import re
import sys

MARKER = "<!-- analysis: everything below is hand-written and kept on regeneration -->"


def load(work, server, label):
    path = os.path.join(work, f"{server}-{label}.json")
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def section(report, name=None):
    if report is None:
        return None
    sections = report["sections"]
    if name is None:
        return sections[0]
    return next((s for s in sections if s["name"] == name), None)


def rate(report, name=None):
    found = section(report, name)
    return found and found["requests_per_second"]


def percentile(report, key, name=None):
    found = section(report, name)
    if not found or not found.get("latency"):
        return None
    return found["latency"]["percentiles"][key]


def failures(report):
    if report is None:
        return "not run"
    total = sum(s["failures"] for s in report["sections"])
    return str(total)


def fmt_rate(value):
    return "n/a" if value is None else f"{value:,.0f}/s"


def fmt_ms(value):
    return "n/a" if value is None else f"{value * 1e3:.2f} ms"


def ratio(metastore, etcd, lower_is_better=False):
    if not metastore or not etcd:
        return "n/a"
    value = etcd / metastore if lower_is_better else metastore / etcd
    return f"{value:.2f}x"


def h2load_rate(work, server):
    try:
        with open(os.path.join(work, f"{server}-h2load.txt")) as file:
            text = file.read()
    except OSError:
        return None
    match = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    succeeded = re.search(r"(\d+) succeeded, (\d+) failed", text)
    if not match or not succeeded or succeeded.group(2) != "0":
        return None
    return float(match.group(1))


def main():
    work, machine, versions, scale = sys.argv[1:5]
    rows = []

    def add(workload, metric, etcd_value, metastore_value, formatter, better, target=""):
        lower = better == "lower"
        rows.append(
            f"| {workload} | {metric} | {formatter(etcd_value)} | {formatter(metastore_value)} "
            f"| {ratio(metastore_value, etcd_value, lower)} | {target} |"
        )

    def both(label):
        return load(work, "etcd", label), load(work, "metastore", label)

    etcd, ms = both("put")
    add("put (256 clients, 8 B keys, 256 B values, 100k keys)", "throughput", rate(etcd), rate(ms), fmt_rate, "higher", ">= 4x")
    add("", "p99 at max load", percentile(etcd, "p99"), percentile(ms, "p99"), fmt_ms, "lower")
    etcd, ms = both("put-half-etcd-max")
    add("put at half etcd's max rate (open loop)", "p99", percentile(etcd, "p99"), percentile(ms, "p99"), fmt_ms, "lower", "MetaStore <= 1/4 of etcd (ratio >= 4x)")
    etcd, ms = both("range-serializable")
    add("range, serializable, one key", "throughput", rate(etcd), rate(ms), fmt_rate, "higher", ">= 6x")
    etcd, ms = both("range-half-etcd-max")
    add("range (s) at half etcd's max rate", "p99", percentile(etcd, "p99"), percentile(ms, "p99"), fmt_ms, "lower", "MetaStore <= 1/4 of etcd (ratio >= 4x)")
    etcd, ms = both("range-linearizable")
    add("range, linearizable, one key", "throughput", rate(etcd), rate(ms), fmt_rate, "higher", ">= 5x")
    add("range, serializable (h2load, 16 conns x 16 streams)", "throughput", h2load_rate(work, "etcd"), h2load_rate(work, "metastore"), fmt_rate, "higher", "cross-check")
    etcd, ms = both("txn-put")
    add("txn-put (1 put per txn)", "throughput", rate(etcd), rate(ms), fmt_rate, "higher")
    etcd, ms = both("lease-keepalive")
    add("lease keep-alive (256 streams)", "throughput", rate(etcd), rate(ms), fmt_rate, "higher")
    etcd, ms = both("watch-latency")
    add("put-to-event, 1,000 watchers on one key, 100 puts/s", "p50", percentile(etcd, "p50", "events"), percentile(ms, "p50", "events"), fmt_ms, "lower")
    add("", "p99", percentile(etcd, "p99", "events"), percentile(ms, "p99", "events"), fmt_ms, "lower")
    etcd, ms = both("watch-fanout")
    add("watch fan-out, 10,000 watchers on one prefix", "events delivered", rate(etcd, "events"), rate(ms, "events"), fmt_rate, "higher")
    add("", "put-to-event p99", percentile(etcd, "p99", "events"), percentile(ms, "p99", "events"), fmt_ms, "lower")
    add("", "watch creation", rate(etcd, "watch creation"), rate(ms, "watch creation"), fmt_rate, "higher")

    failure_lines = []
    for label in ["put", "range-serializable", "range-linearizable", "txn-put", "lease-keepalive", "watch-latency", "watch-fanout", "put-half-etcd-max", "range-half-etcd-max"]:
        etcd, ms = both(label)
        if failures(etcd) != "0" or failures(ms) != "0":
            failure_lines.append(f"- {label}: etcd {failures(etcd)}, MetaStore {failures(ms)} failed requests")

    with open(os.path.join(work, "commands.txt")) as file:
        commands = [line.rstrip("\n") for line in file if line.strip()]

    out = []
    out.append("# Benchmarks: MetaStore vs etcd")
    out.append("")
    out.append("Generated by `scripts/compare-etcd.sh` (do not edit above the analysis marker; rerun the script).")
    out.append("Both servers ran one after the other on the same machine, with the same loadgen commands, in one run.")
    out.append("")
    out.append(f"- Date: {datetime.date.today().isoformat()}")
    out.append(f"- Machine: {machine}")
    out.append(f"- Versions: {versions}")
    out.append(f"- Request counts scaled by {scale}")
    out.append("- Durability: both fsync the write-ahead log before acknowledging a write; defaults otherwise.")
    out.append("")
    out.append("Ratio is MetaStore over etcd for throughput and etcd over MetaStore for latency, so above 1x means MetaStore is better.")
    out.append("")
    out.append("| workload | metric | etcd | MetaStore | ratio | target |")
    out.append("|---|---|---:|---:|---:|---|")
    out.extend(rows)
    out.append("")
    if failure_lines:
        out.append("Failed requests:")
        out.extend(failure_lines)
        out.append("")
    out.append("## Commands")
    out.append("")
    out.append("Each ran against etcd and then MetaStore (`$ENDPOINT`), with `--quiet --json`:")
    out.append("")
    out.append("```sh")
    out.extend(commands)
    out.append("```")
    out.append("")
    out.append(MARKER)

    kept = ""
    target = "docs/benchmarks.md"
    if os.path.exists(target):
        with open(target) as file:
            existing = file.read()
        if MARKER in existing:
            kept = existing.split(MARKER, 1)[1]
    print("\n".join(out) + kept, end="" if kept else "\n")


if __name__ == "__main__":
    main()
