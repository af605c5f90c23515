"""Turning a benchmark run into numbers people compare: percentiles, "added" latency (a
gateway's percentile minus the direct call's), the table, the JSON and the plots."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

from core.naming import provider_deployment

HELD_P99_ADDED_MS = 50.0
GATEWAYS = {"neuroapi": "NeuroAPI", "neuroapi-unmetered": "NeuroAPI, metering off", "litellm": "LiteLLM"}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarise(outcome: dict) -> dict:
    latency, gaps = outcome["latency_ms"], outcome["gap_ms"]
    failed = sum(outcome["errors"].values())
    summary = {
        "requests": outcome["requests"], "ok": outcome["ok"], "failed": failed, "errors": outcome["errors"],
        "per_s": outcome["ok"] / outcome["wall_s"] if outcome["wall_s"] else math.nan,
        **{f"p{q}": percentile(latency, q) for q in (50, 90, 99)}, "max": max(latency, default=math.nan),
        "gap_p50": percentile(gaps, 50), "gap_p99": percentile(gaps, 99),
    }
    if "cpu_s" in outcome:
        summary["cpu_s"] = outcome["cpu_s"]
        summary["cpu_s_per_1000"] = outcome["cpu_s"] / outcome["requests"] * 1000 if outcome["requests"] else math.nan
    return summary


def one_line(phase: dict) -> str:
    failed = f"  FAILED {phase['failed']}: {phase['errors']}" if phase["failed"] else ""
    gap = f"  gap p50 {phase['gap_p50']:.2f} p99 {phase['gap_p99']:.2f}" if not math.isnan(phase["gap_p50"]) else ""
    return f"p50 {phase['p50']:.2f} ms  p99 {phase['p99']:.2f} ms  {phase['per_s']:.0f}/s{gap}{failed}"


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    memory = Path("/proc/meminfo").read_text().split()[1] if Path("/proc/meminfo").exists() else "0"
    return f"{len(os.sched_getaffinity(0))} vCPU {model}, {int(memory) / 2**20:.0f} GiB, Linux {platform.release()}"


# ---- the table ---------------------------------------------------------------------------

def added(gateway: dict, direct: dict, low: str = "p50", high: str = "p99") -> str:
    cell = f"{gateway[low] - direct[low]:.2f} / {gateway[high] - direct[high]:.2f}"
    if gateway["failed"]:
        cell += f" ({gateway['failed']}/{gateway['requests']} failed)"
    return cell


def held(phase: dict, direct: dict) -> bool:
    return not phase["failed"] and phase["p99"] - direct["p99"] < HELD_P99_ADDED_MS


def rows(run: dict) -> tuple[list[str], list[list[str]]]:
    systems = run["systems"]
    direct = systems["direct"]["phases"]
    gateways = [name for name in GATEWAYS if name in systems]
    header = ["", "direct p50 / p99 ms"] + [f"{GATEWAYS[g]} added p50 / p99 ms" for g in gateways]
    table = []

    def row(label: str, phase: str, low: str = "p50", high: str = "p99") -> None:
        d = direct[phase]
        table.append([label, f"{d[low]:.2f} / {d[high]:.2f}"]
                     + [added(systems[g]["phases"][phase], d, low, high) for g in gateways])

    row("non-stream, concurrency 1", "sequential")
    rates = sorted(int(p.split()[1]) for p in direct if p.startswith("rate "))
    for rate in rates:
        row(f"non-stream, open loop {rate}/s", f"rate {rate}")
    table.append([f"highest rate held (no errors, p99 added < {HELD_P99_ADDED_MS:.0f} ms)",
                  ""] + [highest_held(systems[g]["phases"], direct, rates) for g in gateways])
    row("64-chunk stream, concurrency 1: time to first token", "stream sequential")
    row("64-chunk stream, concurrency 1: gap between chunks", "stream sequential", "gap_p50", "gap_p99")
    row("64-chunk stream, ~20 concurrent: time to first token", "stream 20 concurrent")
    row("64-chunk stream, ~20 concurrent: gap between chunks", "stream 20 concurrent", "gap_p50", "gap_p99")
    memory = [systems[g]["memory"] for g in gateways]
    soak = memory[0]["soak_s"] if memory else 0
    table.append(["peak RSS of all the gateway's processes, MB (USS)", ""]
                 + [f"{m['peak_rss'] / 2**20:.0f} ({m['peak_uss'] / 2**20:.0f})" for m in memory])
    table.append([f"RSS growth over {soak:.0f} s at {memory[0]['soak_rate'] if memory else 0}/s, MB", ""]
                 + [f"{m['soak_growth_rss'] / 2**20:+.1f}" for m in memory])
    table.append(["CPU seconds per 1,000 requests (same run)", ""]
                 + [f"{systems[g]['phases']['soak']['cpu_s_per_1000']:.2f}" if "cpu_s_per_1000" in
                    systems[g]["phases"]["soak"] else "" for g in gateways])
    return header, table


def highest_held(phases: dict, direct: dict, rates: list[int]) -> str:
    passed = [rate for rate in rates if held(phases[f"rate {rate}"], direct[f"rate {rate}"])]
    return f"{max(passed)}/s" if passed else f"under {rates[0]}/s"


def markdown(run: dict) -> str:
    header, table = rows(run)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table]
    versions = "; ".join(f"{name}: {s['version']}" for name, s in run["systems"].items() if s["version"])
    pinning = run["pinning"]
    batches = run["systems"].get("neuroapi", {}).get("metering_batches")
    if batches and batches["batches"]:
        lines.append(f"\nMetering: {batches['records']} call records reached Redis in {batches['batches']} pipelined "
                     f"writes (mean {batches['mean']:.1f} records per write) over the whole NeuroAPI run, soak "
                     f"at {run['systems']['neuroapi']['memory']['soak_rate']}/s included.")
    return "\n".join([
        f"`{run['command']}` on {run['machine']}, Python {run['python']}; {versions}.",
        f"CPU pinning: gateway on {pinning['gateway'] or 'all'}, upstream + load generator on "
        f"{pinning['harness'] or 'all'}. Upstream: {run['upstream']['latency_ms']:g} ms to answer, "
        f"chunks {run['upstream']['gap_ms']:g} ms apart.",
        "", *lines, ""])


# ---- files -------------------------------------------------------------------------------

def write(run: dict, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(run, indent=1, default=str) + "\n")
    table = markdown(run)
    (folder / "results.md").write_text(table)
    plot(run, folder)
    return table


def plot(run: dict, folder: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    systems = run["systems"]
    labels = {"direct": "direct to upstream", **GATEWAYS}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, q in zip(axes, ("p50", "p99"), strict=False):
        for name, system in systems.items():
            points = sorted((int(p.split()[1]), s) for p, s in system["phases"].items() if p.startswith("rate "))
            rates = [rate for rate, _ in points]
            axis.plot(rates, [s[q] for _, s in points], marker="o", label=labels[name])
            failed = [(rate, s[q]) for rate, s in points if s["failed"]]
            if failed:
                axis.scatter(*zip(*failed, strict=False), marker="x", s=90, color="red", zorder=3)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks([rate for rate, _ in points], [str(rate) for rate, _ in points])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("offered load, requests/s (open loop)")
        axis.set_title(f"non-stream latency {q} (red x: requests failed)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms from scheduled send to full answer")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(folder / "latency_vs_rate.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, phase in zip(axes, ("stream sequential", "stream 20 concurrent"), strict=False):
        names = list(systems)
        for offset, q in ((-0.2, "p50"), (0.2, "p99")):
            axis.bar([i + offset for i in range(len(names))], [systems[n]["phases"][phase][q] for n in names],
                     width=0.4, label=q)
        axis.set_xticks(range(len(names)), [labels[n].replace(" ", "\n", 1) for n in names])
        axis.set_title(f"64-chunk stream, {phase.split(' ', 1)[1]}: time to first token")
        axis.set_yscale("log")
        axis.set_ylabel("ms (log scale)")
        axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "stream_ttft.png", dpi=110)
    plt.close(figure)


# ---- profiling (py-spy) --------------------------------------------------------------------

def start_profile(system, folder: Path) -> list:
    """py-spy (sampling only the thread holding the GIL: Python's CPU) on NeuroAPI's ingress
    and provider-proxy replicas until ``finish_profile``; raw stacks go to the results folder."""
    from benchmarks.processes import tree

    profilers = []
    for process in tree(system.pid):
        title = " ".join(process.cmdline())
        for role in ("Ingress", provider_deployment("openai")):
            if f"ServeReplica:neuroapi:{role}" in title:
                output = folder / f"profile-{role}.txt"
                output.parent.mkdir(parents=True, exist_ok=True)
                profilers.append((role, output, subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(process.pid), "--rate", "250", "--gil", "--nonblocking", "--format", "raw",
                     "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    return profilers


def finish_profile(profilers: list) -> dict:
    import signal

    summary = {}
    for role, output, process in profilers:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        summary[role] = top_frames(output.read_text() if output.exists() else "")
    return summary


def top_frames(collapsed: str, limit: int = 12) -> dict:
    """Self and inclusive sample shares by function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples

    def share(counts: dict[str, int]) -> list:
        return [(frame, round(100 * n / total, 1)) for frame, n in
                sorted(counts.items(), key=lambda item: -item[1])[:limit]] if total else []

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}
