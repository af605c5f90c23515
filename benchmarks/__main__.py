"""NeuroAPI against calling the upstream directly (and against LiteLLM's proxy), one run:

    .venv/bin/python -m benchmarks [--compare litellm] [--quick] [--profile]

Starts a fast fake OpenAI upstream, then one system at a time (direct, NeuroAPI via
``neuroapi serve``, LiteLLM), drives the same phases of load at each from a load generator in
its own process, and writes ``benchmarks/results/`` (JSON, a markdown table, PNG plots). On a
machine with two or more CPUs the harness (upstream + load generator) is pinned to the last CPU
and the gateway under test to the others, so the generator's clock is never starved by the
gateway and both gateways get the same CPUs."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.processes import TreeMonitor, measure
from benchmarks.systems import LiteLLM, NeuroAPI, System, Upstream

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return set(cpus[:-1]), {cpus[-1]}  # gateway, harness


def load(spec: dict, harness_cpus: set[int] | None) -> dict:
    preexec = (lambda: os.sched_setaffinity(0, harness_cpus)) if harness_cpus else None
    with tempfile.NamedTemporaryFile(suffix=".json") as output:
        done = subprocess.run([sys.executable, "-m", "benchmarks.load", json.dumps({**spec, "output": output.name})],
                              capture_output=True, text=True, preexec_fn=preexec,
                              timeout=spec.get("duration_s", 60) * 3 + 300)
        if done.returncode:
            raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
        return json.loads(Path(output.name).read_text())


def phases(args: argparse.Namespace) -> list[dict]:
    quick = args.quick
    duration = 5 if quick else args.duration
    plan = [{"phase": "sequential", "stream": False, "rate": 0, "count": 100 if quick else 1000}]
    plan += [{"phase": f"rate {rate}", "stream": False, "rate": rate, "duration_s": duration} for rate in args.rates]
    plan += [
        {"phase": "stream sequential", "stream": True, "rate": 0, "count": 5 if quick else 30},
        # 64 chunks 20 ms apart take about 1.3 s: 15 new streams a second keep about 20 open.
        {"phase": "stream 20 concurrent", "stream": True, "rate": 15, "duration_s": duration},
    ]
    return plan


def drive(system: System, plan: list[dict], harness_cpus, soak_s: float, soak_rate: int,
          profile_rate: int | None = None, out: Path = RESULTS) -> dict:
    results: dict = {"version": system.version(), "phases": {}}
    monitor = TreeMonitor(system.pid) if system.name != "direct" else None
    for step in plan:
        spec = {**step, "url": system.url, "headers": system.headers, "chunks": 64}
        before = measure(system.pid)[2] if monitor else 0.0
        outcome = load(spec, harness_cpus)
        if monitor:
            outcome["cpu_s"] = measure(system.pid)[2] - before
        results["phases"][step["phase"]] = report.summarise(outcome)
        print(f"  {system.name:<9} {step['phase']:<22} {report.one_line(results['phases'][step['phase']])}",
              file=sys.stderr, flush=True)
    if monitor:
        start, cpu_before = time.monotonic(), measure(system.pid)[2]
        soak = load({"phase": "soak", "stream": False, "rate": soak_rate, "duration_s": soak_s,
                     "url": system.url, "headers": system.headers}, harness_cpus)
        end, soak["cpu_s"] = time.monotonic(), measure(system.pid)[2] - cpu_before
        monitor.stop()
        rss = monitor.rss_between(start + min(10.0, soak_s / 4), end)
        results["memory"] = {"peak_rss": monitor.peak_rss, "peak_uss": monitor.peak_uss,
                             "soak_growth_rss": (rss[-1] - rss[0]) if len(rss) > 1 else 0,
                             "soak_s": soak_s, "soak_rate": soak_rate}
        results["phases"]["soak"] = report.summarise(soak)
    if profile_rate:
        # Its own phase, after the measured ones: sampling costs the gateway CPU.
        profiler = report.start_profile(system, out)
        load({"stream": False, "rate": profile_rate, "duration_s": 15, "url": system.url,
              "headers": system.headers}, harness_cpus)
        results["profile"] = report.finish_profile(profiler)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="append", default=[], choices=["litellm", "unmetered"],
                        help="also drive LiteLLM, or NeuroAPI with metering off, against the same upstream")
    parser.add_argument("--quick", action="store_true", help="short phases, for a smoke run")
    parser.add_argument("--rates", type=lambda s: [int(r) for r in s.split(",")], default=[50, 100, 200, 400],
                        help="open-loop request rates per second (default 50,100,200,400)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per open-loop phase")
    parser.add_argument("--soak", type=float, default=120.0, help="seconds of the memory/CPU run")
    parser.add_argument("--soak-rate", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the fake upstream's time to answer")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="the fake upstream's gap between chunks")
    parser.add_argument("--litellm-workers", type=int, default=2)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--profile", type=int, nargs="?", const=100, default=None, metavar="RATE",
                        help="then py-spy NeuroAPI's replicas for 15 s at RATE requests/s (default 100)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    soak_s = 30.0 if args.quick else args.soak

    gateway_cpus, harness_cpus = cpu_split(not args.no_pin)
    upstream = Upstream(harness_cpus, args.latency_ms, args.gap_ms)
    plan = phases(args)
    run = {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "machine": report.machine(), "python": platform.python_version(),
        "pinning": {"gateway": sorted(gateway_cpus or []), "harness": sorted(harness_cpus or [])},
        "upstream": {"latency_ms": args.latency_ms, "gap_ms": args.gap_ms},
        "systems": {},
    }
    try:
        run["systems"]["direct"] = drive(upstream, plan, harness_cpus, 0, 0)
        starters = [lambda: NeuroAPI(upstream, gateway_cpus)]
        if "unmetered" in args.compare:
            starters.append(lambda: NeuroAPI(upstream, gateway_cpus, metering=False))
        if "litellm" in args.compare:
            starters.append(lambda: LiteLLM(upstream, gateway_cpus, args.litellm_workers))
        for start in starters:
            system = start()
            try:
                profile = args.profile if system.name == "neuroapi" else None
                run["systems"][system.name] = drive(system, plan, harness_cpus, soak_s, args.soak_rate, profile,
                                                    args.out)
                if isinstance(system, NeuroAPI) and system.metering:
                    time.sleep(3)  # Ray's metrics agent exports every few seconds
                    run["systems"][system.name]["metering_batches"] = system.batch_sizes()
            finally:
                system.stop()
    finally:
        upstream.stop()
    print(report.write(run, args.out))


if __name__ == "__main__":
    main()
