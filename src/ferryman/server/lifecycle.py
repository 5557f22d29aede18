"""Start-up, reload and drain: the only place with signal handlers and side effects.

Reload builds the new Plan off the event loop (it may read large domain lists),
binds any new listeners, and only then swaps `engine.plan`; any failure leaves
the old Plan serving and logs why.

Reloads run one at a time.  A request (SIGHUP or `POST /reload`) that arrives
while one runs is never dropped: exactly one more reload follows the running
one, and every request made meanwhile shares it (it reads the file as it is
then).  Each request learns the result of a reload that started after it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import ssl
import sys
from typing import Protocol

from ferryman.conn.engine import Engine
from ferryman.errors import ConfigError
from ferryman.observe.admin import AdminProtocol
from ferryman.pipeline.plan import ListenerPlan, Plan
from ferryman.server.listener import Bound, listener_key, start_listener
from ferryman.server.tls import ServerTls

log = logging.getLogger("ferryman")

HOLD_FOR = 0.25  # seconds between looks while accepting is held for want of descriptors
HOLD_LOG_EVERY = 10.0


class PlanSource(Protocol):
    """Where a reload gets its new Plan: the cli hands in a `config.reload.ConfigSource`
    (server/ sits below config/ and imports nothing from it)."""

    @property
    def name(self) -> str: ...

    async def build(self) -> Plan: ...


def cache_summary(plan: Plan, mode: str) -> str:
    """What caches a listener's traffic, for its start-up line: ``memory 64MiB``, ``off``..."""
    c = plan.cache
    if c is None or (mode == "forward" and not c.forward):
        return "off"
    size = c.max_size
    units = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))
    shown = next((f"{size // m}{u}" for m, u in units if size and size % m == 0), f"{size}B")
    where = {"disk": f"disk {c.path} {shown}", "redis": "redis"}.get(c.store, f"memory {shown}")
    return where if mode == "forward" else f"{where} (routes with cache.enabled)"


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit, as nginx's ``worker_rlimit_nofile``: every
    client and upstream connection is a descriptor.  Logs the figure; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:  # Linux refuses more than fs.nr_open
            with open("/proc/sys/fs/nr_open") as fh:
                target = int(fh.read())
        except (OSError, ValueError):
            target = 1 << 20
    before = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("ferryman: cannot raise the descriptor limit from %d: %s", soft, exc)
    if soft != before:
        log.warning("ferryman: file descriptor limit %d (raised from %d)", soft, before)
    else:
        log.warning("ferryman: file descriptor limit %d", soft)
    return soft


class Server:
    def __init__(self, source: PlanSource, plan: Plan, reuse_port: bool = False) -> None:
        self.source = source
        self.reuse_port = reuse_port
        self.plan = plan
        self.engine: Engine | None = None
        self.listeners: dict[tuple[str, int, bool], Bound] = {}
        self.stopping: asyncio.Event | None = None
        self._reloading = False
        self._holding = False  # accepting paused: out of descriptors
        self._held_logged = -1e9
        self._due: asyncio.Future[bool] | None = None  # the reload the requests so far wait for
        self._runner: asyncio.Task[None] | None = None
        self.admin: asyncio.Server | None = None
        self.admin_addr: tuple[str, int] | None = None

    async def start(self) -> None:
        self.engine = Engine(self.plan)
        self.engine.on_descriptors_low = self._hold_accepts
        await self.engine.open_cache(self.plan)
        self.stopping = asyncio.Event()
        for lp in self.plan.listeners:
            await self._bind(lp)
        await self._bind_admin(self.plan.admin)

    def _hold_accepts(self) -> None:
        """Out of descriptors with no idle connection left to close: stop accepting for a
        moment (the clients wait in the accept queues), then look again.  Logged at most once
        per `HOLD_LOG_EVERY` seconds."""
        if self._holding or self.engine is None or self.engine.draining:
            return
        self._holding = True
        loop = asyncio.get_running_loop()
        # Called from inside the loop's accept callback: closing its server right there would
        # drop the client being accepted, so the hold starts on the next turn (the reserve of
        # descriptors covers the rest of the batch).
        loop.call_soon(self._hold_listeners)
        if loop.time() - self._held_logged >= HOLD_LOG_EVERY:
            self._held_logged = loop.time()
            log.error(
                "ferryman: out of file descriptors (limit %d): not accepting for %gs at a time "
                "until some are free; raise the limit (ulimit -n)", self.engine.fd_limit, HOLD_FOR,
            )
        loop.create_task(self._resume_accepts())

    def _hold_listeners(self) -> None:
        for bound in self.listeners.values():
            bound.hold()

    async def _resume_accepts(self) -> None:
        engine = self.engine
        assert engine is not None
        try:
            while True:
                await asyncio.sleep(HOLD_FOR)
                if engine.draining:
                    return
                if not engine.descriptors_low() or engine.relieve_descriptors(engine.fd_reserve):
                    break
            for bound in self.listeners.values():
                await bound.unhold()
        finally:
            self._holding = False

    async def _bind_admin(self, addr: tuple[str, int] | None) -> None:
        if addr == self.admin_addr:
            return
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        self.admin_addr = addr
        if addr is None:
            return
        engine = self.engine
        assert engine is not None
        loop = asyncio.get_running_loop()
        self.admin = await loop.create_server(
            lambda: AdminProtocol(engine, lambda: self.reload("POST /reload")), addr[0], addr[1],
            reuse_address=True, reuse_port=self.reuse_port or None,
        )
        log.warning("ferryman: admin API on http://%s:%d/status", addr[0], addr[1])

    async def _bind(self, lp: ListenerPlan) -> None:
        assert self.engine is not None
        bound = Bound(lp)
        await start_listener(self.engine, bound, self.reuse_port)
        self.listeners[listener_key(lp)] = bound
        log.warning(
            "ferryman: %s proxy listening on %s:%d (%s), cache: %s",
            lp.mode, lp.host, lp.port, lp.name, cache_summary(self.engine.plan, lp.mode),
        )

    def request_reload(self, why: str) -> asyncio.Future[bool]:
        """Schedule a reload; the future says whether the config it read took effect."""
        loop = asyncio.get_running_loop()
        due = self._due
        if due is None:
            due = self._due = loop.create_future()
            if self._reloading:
                log.warning("ferryman: %s during a reload: one more reload follows it", why)
        elif self._reloading:
            log.warning("ferryman: %s during a reload: merged with the reload already due", why)
        if self._runner is None:
            self._runner = loop.create_task(self._run_reloads())
        return due

    async def reload(self, why: str = "reload requested") -> bool:
        if self.engine is None:
            return False
        return await asyncio.shield(self.request_reload(why))

    async def _run_reloads(self) -> None:
        try:
            while self._due is not None:
                due, self._due = self._due, None
                self._reloading = True
                try:
                    ok = await self._reload_once()
                except Exception:  # noqa: BLE001 - whatever broke, the old Plan keeps serving
                    log.exception("ferryman: reload failed, old config keeps serving")
                    ok = False
                finally:
                    self._reloading = False
                if not due.done():
                    due.set_result(ok)
        finally:
            self._runner = None
            if self._due is not None and not self._due.done():
                self._due.cancel()  # only on shutdown, when the runner itself was cancelled

    async def _reload_once(self) -> bool:
        assert self.engine is not None
        try:
            plan = await self.source.build()
        except ConfigError as exc:
            log.error("ferryman: reload refused, old config keeps serving:\n%s", exc.render())
            return False
        wanted = {listener_key(lp): lp for lp in plan.listeners}
        added: list[tuple[str, int, bool]] = []

        def undo() -> None:
            for key in added:
                self.listeners.pop(key).close()

        try:
            for key, lp in wanted.items():
                if key not in self.listeners:
                    await self._bind(lp)
                    added.append(key)
            # Validate every certificate before anything changes (Bound.update raises).
            for key, lp in wanted.items():
                if key in self.listeners and key not in added and lp.tls is not None:
                    ServerTls(lp.tls)
            await self.engine.open_cache(plan)
            self.engine.apply(plan)
        except (OSError, ssl.SSLError) as exc:
            undo()
            log.error("ferryman: reload refused, old config keeps serving: %s", exc)
            return False
        for key, lp in wanted.items():
            if key not in added:
                self.listeners[key].update(lp)  # certificates checked above
        for key in list(self.listeners):
            if key not in wanted:
                self.listeners.pop(key).close()
        self.plan = plan
        try:
            await self._bind_admin(plan.admin)
        except OSError as exc:
            log.error("ferryman: admin listener not moved: %s", exc)
        log.warning("ferryman: configuration reloaded from %s", self.source.name)
        return True

    async def drain(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish up to ``grace``, then close."""
        engine = self.engine
        assert engine is not None
        for bound in self.listeners.values():
            bound.close()
        if self.admin is not None:
            self.admin.close()
        engine.draining = True
        for conn in list(engine.connections):
            conn.drain()
        await engine.wait_closed(grace)  # woken by the last connection to close
        for conn in list(engine.connections):
            conn.force_close()
        engine.close()


async def serve(source: PlanSource, plan: Plan, reuse_port: bool = False) -> int:
    server = Server(source, plan, reuse_port)
    try:
        await server.start()
    except OSError as exc:
        print(f"ferryman: cannot start: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_hup() -> None:
        server.request_reload("SIGHUP")

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    # A worker starts with SIGHUP blocked (supervisor.py): one sent before this handler
    # existed is pending and is delivered now, so it is neither fatal nor lost.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log.warning("ferryman: shutting down (grace %gs)", server.plan.timeouts.shutdown_grace)
    await server.drain(server.plan.timeouts.shutdown_grace)
    return 0
