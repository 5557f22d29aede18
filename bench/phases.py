"""Per-request cost of the phase runner (pipeline/stage.run) over the compiled lists.

Times, per request: building the context, then `run` over the list the connection runs
for the request's form of target (`Phases.for_head`): the forward list for a GET with an
absolute URL (the default config, 20 rules, the SSRF guard's phase, elite anonymity) and
the reverse list (one route to an upstream group), each with and without the memory
cache's phase; and, for scale, the bare runner over a
list of phases that only continue.  CPU time of one request (process_time: less disturbed
by other load than wall time), best of ``--rounds``.

    .venv/bin/python bench/phases.py [--number 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit

from ferryman.config.compile import Plan, compile_config
from ferryman.config.load import load_text, normalise
from ferryman.conn.phases import Env, compile_phases
from ferryman.http1.events import Framing, RequestHead
from ferryman.observe.access_log import AccessLog
from ferryman.pipeline.context import Client, RequestContext
from ferryman.pipeline.stage import CONTINUE, Decision, run

REVERSE = (
    "listeners: [{listen: '127.0.0.1:8080', mode: reverse}]\n"
    "upstreams: {o: {servers: [{url: 'http://127.0.0.1:9'}]}}\n"
    "routes: [{upstream: o, cache: {enabled: true}}]\n"
)
# issue 12's forward controls: 20 rules of the usual kinds (a run of blocked names, a port
# ban, a path rule, a time window), none of which matches the timed request
RULES = "forward:\n  rules:\n" + "".join(
    f"    - deny: {{domains: [blocked{i}.example]}}\n" for i in range(16)
) + (
    "    - deny: {ports: [25, 465]}\n"
    "    - deny: {path_prefix: [/admin]}\n"
    "    - deny: {methods: [DELETE], time: {from: '22:00', to: '06:00', tz: UTC}}\n"
    "    - allow: {}\n"
)
OFFICE = "forward: {clients: [127.0.0.0/8, 10.0.0.0/8]}\n"  # not laptop mode: the guard's phase runs
HEADERS = [
    (b"Host", b"origin.test"), (b"User-Agent", b"wrk"), (b"Accept", b"*/*"),
    (b"Accept-Encoding", b"gzip"), (b"Connection", b"keep-alive"),
]


def plan_of(text: str) -> Plan:
    return compile_config(normalise(load_text(text, "<bench>")), "<bench>")


def head(target: bytes) -> RequestHead:
    host = b"origin.test"
    return RequestHead("GET", target, "1.1", HEADERS, Framing.NONE, 0, True, host, frozenset(), False)


def no_log() -> AccessLog:
    raise AssertionError("the log phases are not timed here")


def control_case(tmp: str) -> tuple[str, tuple[object, ...], Client, RequestHead, Plan]:
    """issue 12's benchmark config (bench/run.py `control_forward`): proxy auth with the
    request's credential already checked (answered from the connection's memo), 20 rules
    with a 100,000-entry domains file, elite."""
    import asyncio
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import run as bench_run  # noqa: PLC0415 (the config of the wrk scenario, shared)

    from ferryman.conn.auth import AuthRuntime
    from ferryman.conn.clock import LoopClock
    from ferryman.pipeline.admit.htpasswd import verify_password
    from ferryman.pipeline.stage import Authenticate

    fwd = bench_run.control_forward(Path(tmp), True)
    text = "forward: " + json.dumps(fwd) + "\n"
    plan = plan_of(text)
    loop = asyncio.new_event_loop()
    rt = AuthRuntime(loop, LoopClock(loop))
    rt.adopt(plan.forward.control.auth)
    phases = compile_phases(plan, "forward", Env(False, lambda ip, port: False, no_log, rt))
    client = Client(plan.listeners[0], "127.0.0.1", 5555)
    h = head(b"http://origin.test/index.html")
    h.headers = [*HEADERS, (b"Proxy-Authorization", bench_run.BENCH_AUTH.encode())]
    ctx = RequestContext(client, h, plan)
    steps = phases.for_head(h)
    d = run(steps, ctx)
    assert isinstance(d, Authenticate)
    d.resume(ctx, d.step, verify_password(d.step.entry, d.step.password))
    label = f"forward, auth + 20 rules (100k file) + elite ({len(steps)} phases)"
    return label, steps, client, h, plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cases = []
    for name, text, mode, target in (
        ("forward", "", "forward", b"http://origin.test/index.html"),
        ("forward, 20 rules", RULES, "forward", b"http://origin.test/index.html"),
        ("forward, office (SSRF guard)", OFFICE, "forward", b"http://origin.test/index.html"),
        ("forward, elite", "forward: {anonymity: elite}\n", "forward", b"http://origin.test/index.html"),
        ("reverse", REVERSE, "reverse", b"/index.html"),
    ):
        for cache in (False, True):
            plan = plan_of(("cache: {store: memory}\n" if cache else "") + text)
            phases = compile_phases(plan, mode, Env(cache, lambda ip, port: False, no_log))
            client = Client(plan.listeners[0], "127.0.0.1", 5555)
            h = head(target)
            steps = phases.for_head(h)  # what the connection runs for this form of target
            label = f"{name}{' +cache' if cache else ''} ({len(steps)} phases)"
            cases.append((label, steps, client, h, plan))

    with tempfile.TemporaryDirectory() as tmp:
        cases.append(control_case(tmp))

    def cont(ctx: RequestContext) -> Decision:
        return CONTINUE

    plan = plan_of("")
    bare = Client(plan.listeners[0])
    cases.append(("bare runner, 8 phases that continue", (cont,) * 8, bare, head(b"/"), plan))
    cases.append(("context only (no phase)", (), bare, head(b"/"), plan))
    print(f"{'case':44} {'us/request':>10}")
    for label, request, client, h, p in cases:
        def one(request=request, client=client, h=h, p=p) -> None:  # type: ignore[no-untyped-def]
            run(request, RequestContext(client, h, p))

        best = min(timeit.repeat(one, number=args.number, repeat=args.rounds, timer=time.process_time))
        print(f"{label:44} {best / args.number * 1e6:10.2f}")


if __name__ == "__main__":
    main()
