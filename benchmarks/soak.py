"""A soak: mixed traffic for minutes against the real ``neuroapi serve`` (embedded Redis, no
in-house model, the benchmark's fast fake upstream), and every gateway process's memory and
open file descriptors at the start (after a warm-up) and at the end:

    .venv/bin/python -m benchmarks.soak --minutes 10 --rate 30

Traffic (``benchmarks.traffic``): ``--rate`` chat calls/s, ``--stream-rate`` streams/s, one bad
key every 5 s (under the failed-auth limit, so it never throttles the rest), /v1/models and
/v1/usage. Processes are the tree of ``neuroapi serve`` (Ray's GCS, raylet, workers and
replicas, HAProxy, Redis; ``benchmarks.processes.tree``), each sampled after the warm-up and
after the traffic (each time once the gateway has been idle for a few seconds). Writes
``benchmarks/results/soak.json`` and ``soak.md``: a table with growth % per process and in total."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from benchmarks import report
from benchmarks.processes import tree
from benchmarks.systems import NeuroAPI, Upstream, _pinned
from benchmarks.traffic import Outcome

RESULTS = Path(__file__).resolve().parent / "results"
IDLE_S = 5.0  # between the end of traffic and a sample


def label(process: psutil.Process) -> str:
    """A readable name: Ray titles its workers ``ray::ServeReplica:<app>:<deployment>``."""
    cmdline = process.cmdline()
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0].removeprefix("ray::")
    name = process.name()
    if name.startswith("python") and len(cmdline) > 1:
        script = next((part for part in cmdline[1:] if not part.startswith("-")), "")
        name = f"python {Path(script).name or ' '.join(cmdline[1:3])}"
    return name


def sample(root_pid: int) -> dict[int, dict]:
    found = {}
    for process in tree(root_pid):
        try:
            with process.oneshot():
                found[process.pid] = {"name": label(process), "rss": process.memory_info().rss,
                                      "fds": process.num_fds()}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def growth(start: dict[int, dict], end: dict[int, dict]) -> list[dict]:
    rows = []
    for pid in sorted(set(start) | set(end), key=lambda p: (start.get(p) or end[p])["name"]):
        a, b = start.get(pid), end.get(pid)
        row = {"pid": pid, "name": (a or b)["name"], "state": "kept" if a and b else ("new" if b else "gone")}
        for what in ("rss", "fds"):
            row[f"{what}_start"], row[f"{what}_end"] = (a or {}).get(what), (b or {}).get(what)
        rows.append(row)
    return rows


def pct(before: float | None, after: float | None) -> str:
    if not before or after is None:
        return "-"
    return f"{(after - before) / before * 100:+.1f} %"


def table(rows: list[dict]) -> str:
    lines = ["| process | pid | RSS start MB | RSS end MB | RSS growth | fds start | fds end | fds growth |",
             "|---|---|---|---|---|---|---|---|"]

    def mb(value):
        return "-" if value is None else f"{value / 2**20:.1f}"

    for r in rows:
        note = "" if r["state"] == "kept" else f" ({r['state']})"
        lines.append(f"| {r['name']}{note} | {r['pid']} | {mb(r['rss_start'])} | {mb(r['rss_end'])} "
                     f"| {pct(r['rss_start'], r['rss_end'])} | {r['fds_start'] if r['fds_start'] is not None else '-'} "
                     f"| {r['fds_end'] if r['fds_end'] is not None else '-'} | {pct(r['fds_start'], r['fds_end'])} |")
    kept = [r for r in rows if r["state"] == "kept"]
    totals = {f"{w}_{s}": sum(r[f"{w}_{s}"] for r in kept) for w in ("rss", "fds") for s in ("start", "end")}
    lines.append(f"| **total (processes alive at both)** | | {mb(totals['rss_start'])} | {mb(totals['rss_end'])} "
                 f"| {pct(totals['rss_start'], totals['rss_end'])} | {totals['fds_start']} | {totals['fds_end']} "
                 f"| {pct(totals['fds_start'], totals['fds_end'])} |")
    return "\n".join(lines)


def traffic(spec: dict, harness_cpus) -> list[dict]:
    import subprocess
    with tempfile.NamedTemporaryFile(suffix=".json") as output:
        done = subprocess.run([sys.executable, "-m", "benchmarks.traffic", json.dumps({**spec, "output": output.name})],
                              capture_output=True, text=True, preexec_fn=_pinned(harness_cpus),
                              timeout=spec["duration_s"] + spec["timeout_s"] + 300)
        if done.returncode:
            raise RuntimeError(f"traffic failed: {done.stderr[-2000:]}")
        return json.loads(Path(output.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of traffic before the first sample")
    parser.add_argument("--rate", type=float, default=30.0, help="non-streamed chat calls per second")
    parser.add_argument("--stream-rate", type=float, default=2.0, help="streams per second (20 chunks, 20 ms apart)")
    parser.add_argument("--timeout", type=float, default=60.0, help="a call with no answer by then is hung (s)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from benchmarks.__main__ import cpu_split
    gateway_cpus, harness_cpus = cpu_split(not args.no_pin)
    upstream = Upstream(harness_cpus, latency_ms=0, gap_ms=20)
    gateway = None
    run = {"command": " ".join(["python -m benchmarks.soak", *sys.argv[1:]]), "machine": report.machine(),
           "minutes": args.minutes, "rate": args.rate, "stream_rate": args.stream_rate}
    try:
        gateway = NeuroAPI(upstream, gateway_cpus)
        run["version"] = gateway.version()
        spec = {"base": gateway.url.removesuffix("/v1/chat/completions"),
                "key": gateway.headers["Authorization"].removeprefix("Bearer "), "timeout_s": args.timeout,
                "chunks": 20, "mix": {"chat": args.rate, "stream": args.stream_rate, "bad_key": 0.2,
                                      "models": 1.0, "usage": 0.5}}
        traffic({**spec, "duration_s": args.warmup}, harness_cpus)
        time.sleep(IDLE_S)
        start = sample(gateway.pid)
        started = time.time()
        traces = traffic({**spec, "duration_s": args.minutes * 60}, harness_cpus)
        run["wall_s"] = time.time() - started
        time.sleep(IDLE_S)
        end = sample(gateway.pid)
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.stop()
    rows = growth(start, end)
    outcomes = Counter(f"{t['kind']}: {t['status'] or t['outcome']}"
                       + ("" if t["outcome"] in (Outcome.OK, Outcome.ERROR) else f" ({t['outcome']})") for t in traces)
    run.update(processes=rows, outcomes=dict(sorted(outcomes.items())), sent=len(traces))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(run, indent=2))
    text = (f"`{run['command']}` on {run['machine']}; {run['version']}. {len(traces)} requests in "
            f"{run['wall_s']:.0f} s ({args.rate:g} chat/s, {args.stream_rate:g} streams/s, a bad key every 5 s, "
            f"/v1/models 1/s, /v1/usage 0.5/s); samples after a {args.warmup:g} s warm-up and after the traffic, "
            f"each {IDLE_S:g} s idle.\n\n" + table(rows) + "\n\nWhat the clients saw: "
            + ", ".join(f"{k} × {v}" for k, v in run["outcomes"].items()) + "\n")
    (args.out / "soak.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
