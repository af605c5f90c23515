"""What a key's limits add to a call, in one run:

    .venv/bin/python -m benchmarks.limits [--count 400] [--rate 100] [--duration 10]

One ``neuroapi serve`` in front of the fast fake OpenAI upstream, two keys of one account: one
without limits, one with every counted limit set (RPM, TPM and a key budget, all far above what
the run uses, so every call reserves and settles but none is refused). The same load goes to
each key, interleaved (A, B, A, B) so drift hits them alike: ``count`` sequential calls
(concurrency 1), then an open loop at ``rate`` calls a second for ``duration`` seconds (latency
from each call's scheduled time, so queueing shows). Prints p50/p99 per key and phase and the
difference. On two or more CPUs the gateway runs on all but the last, the upstream and the load
generator on the last."""

from __future__ import annotations

import argparse
import statistics

from benchmarks.__main__ import cpu_split, load
from benchmarks.systems import NeuroAPI, Upstream

LIMITS = ["--rpm", "1000000", "--tpm", "1000000000", "--budget", "1000000000"]


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q != 50 else statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400, help="sequential calls per key and round")
    parser.add_argument("--rate", type=int, default=100, help="calls per second in the open-loop phase")
    parser.add_argument("--duration", type=int, default=10, help="seconds of the open-loop phase per key and round")
    args = parser.parse_args()
    gateway_cpus, harness_cpus = cpu_split(pin=True)
    upstream = Upstream(harness_cpus, latency_ms=0, gap_ms=0)
    gateway = None
    try:
        gateway = NeuroAPI(upstream, gateway_cpus)
        limited = gateway._cli("keys", "create", "bench@example.com", "--name", "limited")
        gateway._cli("keys", "limits", limited[:14], *LIMITS)
        keys = {"no limits": gateway.headers, "limits": {"Authorization": f"Bearer {limited}"}}
        phases = {"concurrency 1": {"rate": 0, "count": args.count},
                  f"{args.rate} req/s": {"rate": args.rate, "duration_s": args.duration}}
        samples = {(phase, key): [] for phase in phases for key in keys}
        errors = {key: 0 for key in keys}
        for phase, spec in phases.items():
            for _round in range(2):
                for key, headers in keys.items():
                    outcome = load({"url": gateway.url, "headers": headers, "stream": False, **spec}, harness_cpus)
                    samples[(phase, key)] += outcome["latency_ms"]
                    errors[key] += sum(outcome["errors"].values())
        print(f"{gateway.version()}; non-streamed gpt-4o-mini calls to a fake upstream that answers at once; "
              f"errors: {errors}")
        print("| phase | key | calls | p50 | p99 |")
        print("|---|---|---:|---:|---:|")
        for phase in phases:
            base = samples[(phase, "no limits")]
            for key in keys:
                values = samples[(phase, key)]
                print(f"| {phase} | {key} | {len(values)} | {p(values, 50):.2f} ms | {p(values, 99):.2f} ms |")
            ours = samples[(phase, "limits")]
            print(f"| {phase} | **limits added** | | **{p(ours, 50) - p(base, 50):+.2f} ms** "
                  f"({p(ours, 50) / p(base, 50):.2f}×) | **{p(ours, 99) - p(base, 99):+.2f} ms** |")
    finally:
        for system in (gateway, upstream):
            if system is not None:
                system.stop()


if __name__ == "__main__":
    main()
