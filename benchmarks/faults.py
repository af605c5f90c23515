"""Faults under steady traffic, against the real ``neuroapi serve`` (embedded Redis, no in-house
model, a fake OpenAI upstream on loopback):

    .venv/bin/python -m benchmarks.faults [--quick] [--only redis-down,kill-ingress] [--rate 50]

One fault per phase, each on its own stretch of steady traffic (``benchmarks.traffic``: chat,
streams, a few bad keys, /v1/models, /v1/usage): ``before_s`` of normal traffic, the fault for
``fault_s`` (or an instant, for a kill), then ``after_s`` of normal traffic. For each phase:

- what the clients saw: statuses, ``hung`` (no complete answer within ``--timeout``), errors in
  and out of OpenAI's shape, 200s whose body was not a completion, streams that ended with
  [DONE], with an error event, or silently;
- metering: the account's monthly ``requests`` counter (``neuroapi:account:<id>:usage:<month>``)
  before and after, against the calls the clients sent with the key; and the calls-stream
  records of the request ids the clients saw, 200s against 200s;
- recovery: from the fault's end to the answer of the first of 10 consecutive successful calls
  sent after it.

Writes ``benchmarks/results/faults[-quick].json`` and ``.md`` (one markdown table)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

from actors.accounts.store import account_usage_key
from actors.metering.record import current_month
from actors.metering.usage_store import CALLS_STREAM
from benchmarks import report
from benchmarks.fault_scenarios import FAULTS, Bench, Fault, FaultUpstream, undo
from benchmarks.systems import NeuroAPI, _pinned
from benchmarks.traffic import Outcome

RESULTS = Path(__file__).resolve().parent / "results"
EMAIL = "bench@example.com"  # the account benchmarks.systems.NeuroAPI creates
METERED = ("chat", "stream", "models")  # kinds sent with the valid key that make a call record (not /v1/usage)
CALLS = ("chat", "stream")  # kinds that must end in a completion
SUCCESS_RUN = 10  # consecutive successes that mark recovery
QUIET_S = 8.0  # > the batcher's adopt_every_s (5 s)
# The defaults but two: the request deadline well inside the hung bound (--timeout), so a caller
# of a hung upstream is seen getting its 504; and one load generator may hold more connections
# than one real client address would (a hung upstream at 50/s keeps ~1,000 open).
FAULT_RUN_CONFIG = {"request_deadline_s": 20, "max_connections_per_source": 20_000}


# ---- measuring ------------------------------------------------------------------------------

def run_traffic(spec: dict, harness_cpus: set[int] | None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.traffic", json.dumps(spec)],
                            preexec_fn=_pinned(harness_cpus), stderr=subprocess.PIPE, text=True)


def usage_requests(bench: Bench, account_id: str) -> int:
    return int(bench.redis().hget(account_usage_key(account_id, current_month(int(time.time() * 1000))), "requests") or 0)


def settled_usage(bench: Bench, account_id: str, timeout_s: float = 60.0) -> int:
    """The counter once the batcher has written what it holds: unchanged for QUIET_S (longer than
    the batcher's pass over orphaned write-ahead logs, which a killed replica leaves behind)."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            value = usage_requests(bench, account_id)
        except redis.RedisError:
            value = None
        if value is not None and value != last:
            last, since = value, time.monotonic()
        elif value is not None and time.monotonic() - since >= QUIET_S:
            return value
        time.sleep(0.5)
    return last if last is not None else -1


def records_by_id(bench: Bench, since_s: float) -> dict[str, dict]:
    client, found, start = bench.redis(), {}, f"{int(since_s * 1000)}-0"
    while True:
        entries = client.xrange(CALLS_STREAM, min=start, count=5000)
        for _, fields in entries:
            found[fields.get("request_id", "")] = fields
        if len(entries) < 5000:
            return found
        start = "(" + entries[-1][0]


def recovery_s(traces: list[dict], fault_end: float) -> float | None:
    """From ``fault_end`` to the answer of the first of ``SUCCESS_RUN`` consecutive successful
    calls sent after it (None: never within the phase)."""
    calls = sorted((t for t in traces if t["kind"] in CALLS and t["sent"] >= fault_end), key=lambda t: t["sent"])
    run = 0
    for index, trace in enumerate(calls):
        run = run + 1 if trace["outcome"] == Outcome.OK else 0
        if run == SUCCESS_RUN:
            return max(0.0, calls[index - SUCCESS_RUN + 1]["done"] - fault_end)
    return None


def summarise(traces: list[dict], fault_start: float, fault_end: float) -> dict:
    def window(t: dict) -> str:
        return "before" if t["sent"] < fault_start else ("during" if t["sent"] < fault_end else "after")

    statuses = Counter(str(t["status"]) if t["status"] else t["outcome"] for t in traces)
    outcomes = Counter(t["outcome"] for t in traces)
    by_window = {w: Counter(t["outcome"] for t in traces if window(t) == w) for w in ("before", "during", "after")}
    streams = Counter(t["outcome"] for t in traces if t["kind"] == "stream" and t["status"] == 200)
    server_errors = [t for t in traces if t["status"] >= 500]
    return {
        "sent": len(traces), "by_kind": dict(Counter(t["kind"] for t in traces)),
        "statuses": dict(statuses), "outcomes": dict(outcomes),
        "outcomes_by_window": {w: dict(c) for w, c in by_window.items()},
        "s200": sum(1 for t in traces if t["status"] == 200),
        "s4xx": sum(1 for t in traces if 400 <= t["status"] < 500),
        "s5xx": len(server_errors),
        "s5xx_retry_after": sum(1 for t in server_errors if t["retry_after"]),
        "hung": outcomes[Outcome.HUNG], "connection_errors": outcomes[Outcome.CONNECTION],
        "invalid_200": outcomes[Outcome.INVALID_200], "errors_not_in_shape": outcomes[Outcome.BAD_ERROR],
        "streams": {"done": streams[Outcome.OK], "error_event": streams[Outcome.STREAM_ERROR_EVENT],
                    "silent": streams[Outcome.STREAM_TRUNCATED]},
        "recovery_s": recovery_s(traces, fault_end),
    }


def metering(traces: list[dict], records: dict[str, dict], before: int, after: int) -> dict:
    keyed = [t for t in traces if t["kind"] in METERED]
    seen = [t for t in keyed if t["request_id"]]
    recorded = [t for t in seen if t["request_id"] in records]
    client_200 = {t["request_id"] for t in keyed if t["status"] == 200 and t["request_id"]}
    record_200 = {rid for rid in client_200 if records.get(rid, {}).get("status") == "200"}
    return {
        "counter_delta": after - before if before >= 0 and after >= 0 else None,
        "keyed_sent": len(keyed), "ids_seen": len(seen), "ids_recorded": len(recorded),
        "client_200": len(client_200), "recorded_200": len(record_200),
        "status_mismatch": sum(1 for t in recorded if records[t["request_id"]].get("status") != str(t["status"])),
    }


def settle(bench: Bench, timeout_s: float = 90.0) -> float | None:
    """Seconds until /healthz and SUCCESS_RUN chat calls in a row succeed (None: not within)."""
    started = time.monotonic()
    deadline, run = started + timeout_s, 0
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say ok."}]}
    while time.monotonic() < deadline and run < SUCCESS_RUN:
        try:
            answer = httpx.post(bench.gateway.url, json=body, headers=bench.gateway.headers, timeout=10)
            run = run + 1 if answer.status_code == 200 else 0
        except httpx.HTTPError:
            run = 0
        if run == 0:
            time.sleep(0.5)
    return time.monotonic() - started if run >= SUCCESS_RUN else None


def run_phase(bench: Bench, fault: Fault, args: argparse.Namespace, account_id: str, harness_cpus) -> dict:
    base = bench.gateway.url.removesuffix("/v1/chat/completions")
    key = bench.gateway.headers["Authorization"].removeprefix("Bearer ")
    fault_s = 0.0 if fault.end is None else (args.redis_down_s if fault.name == "redis-down" else
                                               args.redis_frozen_s if fault.name == "redis-frozen" else args.fault_s)
    duration = args.before_s + fault_s + args.after_s
    counter_before = settled_usage(bench, account_id)
    phase_start = time.time()
    with tempfile.NamedTemporaryFile(suffix=".json") as output:
        spec = {"base": base, "key": key, "duration_s": duration, "timeout_s": args.timeout, "chunks": 20,
                "mix": {"chat": args.rate, "stream": args.stream_rate, "bad_key": 0.2, "models": 0.5,
                        "usage": 0.5}, "output": output.name}
        traffic = run_traffic(spec, harness_cpus)
        try:
            time.sleep(args.before_s)
            fault_start = time.time()
            details = fault.start(bench)
            if fault.end is not None:
                time.sleep(fault_s)
                fault.end(bench)
            fault_end = time.time()
            _, stderr = traffic.communicate(timeout=duration + args.timeout + 120)
        finally:
            if traffic.poll() is None:
                traffic.kill()
        if traffic.returncode:
            raise RuntimeError(f"traffic failed: {stderr[-2000:]}")
        traces = json.loads(Path(output.name).read_text())
    result = {"fault": fault.name, "what": fault.what, "fault_s": round(fault_end - fault_start, 1),
              "details": details, **summarise(traces, fault_start, fault_end)}
    counter_after = settled_usage(bench, account_id)
    try:
        records = records_by_id(bench, phase_start - 5)
    except redis.RedisError:
        records = {}
    result["metering"] = metering(traces, records, counter_before, counter_after)
    result["settle_s"] = settle(bench)
    return result


# ---- the table ------------------------------------------------------------------------------

def table(phases: list[dict]) -> str:
    rows = ["| fault | sent | 200 | 4xx | 5xx (with Retry-After) | hung | conn. errors | 200 not a completion "
            "| errors not in shape | streams: [DONE] / error event / silent | counter Δ vs calls sent "
            "| 200 records / 200 seen | recovery s |",
            "|" + "---|" * 13]
    for p in phases:
        if "error" in p:
            rows.append(f"| {p['fault']} | harness error: {p['error']} |" + " |" * 11)
            continue
        m, s = p["metering"], p["streams"]
        recovery = "never" if p["recovery_s"] is None else f"{p['recovery_s']:.2f}"
        rows.append(
            f"| {p['fault']} | {p['sent']} | {p['s200']} | {p['s4xx']} | {p['s5xx']} ({p['s5xx_retry_after']}) "
            f"| {p['hung']} | {p['connection_errors']} | {p['invalid_200']} | {p['errors_not_in_shape']} "
            f"| {s['done']} / {s['error_event']} / {s['silent']} | {m['counter_delta']} vs {m['keyed_sent']} "
            f"| {m['recorded_200']} / {m['client_200']} | {recovery} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short phases (5 s outages), for a smoke run")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None, help="comma-separated fault names")
    parser.add_argument("--rate", type=float, default=50.0, help="non-streamed chat calls per second")
    parser.add_argument("--stream-rate", type=float, default=2.0, help="streams per second (20 chunks, 20 ms apart)")
    parser.add_argument("--timeout", type=float, default=None, help="a call with no answer by then is hung (s)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    quick = args.quick
    args.before_s, args.after_s = (3.0, 12.0) if quick else (10.0, 30.0)
    args.fault_s = 5.0 if quick else 15.0
    args.redis_down_s = 5.0 if quick else 30.0
    args.redis_frozen_s = 5.0 if quick else 20.0
    args.timeout = args.timeout or (20.0 if quick else 60.0)
    faults = [f for f in FAULTS if args.only is None or f.name in args.only]

    from benchmarks.__main__ import cpu_split
    gateway_cpus, harness_cpus = cpu_split(not args.no_pin)
    run = {"command": " ".join(["python -m benchmarks.faults", *sys.argv[1:]]), "machine": report.machine(),
           "rate": args.rate, "stream_rate": args.stream_rate, "timeout_s": args.timeout,
           "before_s": args.before_s, "after_s": args.after_s, "phases": []}
    upstream = FaultUpstream(harness_cpus, gap_ms=20)
    gateway = bench = None
    try:
        gateway = NeuroAPI(upstream, gateway_cpus, config=FAULT_RUN_CONFIG)
        bench = Bench(gateway, upstream, f"unix://{gateway.folder / 'redis' / 'redis.sock'}")
        account_id = json.loads(gateway._cli("usage", EMAIL))["account_id"]
        run["version"] = gateway.version()
        for fault in faults:
            print(f"  {fault.name} ...", file=sys.stderr, flush=True)
            try:
                phase = run_phase(bench, fault, args, account_id, harness_cpus)
            except Exception as error:  # one broken phase must not lose the others' figures
                phase = {"fault": fault.name, "error": f"{type(error).__name__}: {error}"}
                undo(bench)
            run["phases"].append(phase)
            print(f"  {json.dumps(phase)}", file=sys.stderr, flush=True)
    finally:
        if gateway is not None:
            gateway.stop()
        if bench is not None:
            for process in bench.restarted_redis:
                process.terminate()
                process.wait(timeout=30)
        upstream.stop()
    stem = "faults-quick" if quick else "faults"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(run, indent=2))
    text = (f"`{run['command']}` on {run['machine']}; {run.get('version', '')}. Traffic per phase: "
            f"{args.rate:g} chat/s + {args.stream_rate:g} streams/s + bad keys, /v1/models, /v1/usage; "
            f"{args.before_s:g} s before the fault, {args.after_s:g} s after; hung = no answer in {args.timeout:g} s.\n\n"
            + table(run["phases"]) + "\n")
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
