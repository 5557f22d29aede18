"""`workers: N`: one process per core sharing the listening sockets (SO_REUSEPORT).

The supervisor forks the workers, relays SIGHUP (each worker reloads and
validates on its own, so a bad file is refused everywhere), drains them on
SIGTERM/SIGINT, and restarts a worker that dies, backing off if it keeps
dying at start.  It never serves traffic and never imports the engine.

Signals are blocked and taken with `sigwaitinfo`, so no handler runs in the
middle of a fork and none is inherited half-way by a child.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger("ferryman")

_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


def supervise(workers: int, run_worker: Callable[[bool], int], grace: float) -> int:
    """Run ``workers`` children of ``run_worker(respawned)`` until SIGTERM/SIGINT; see the module doc."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, float] = {}  # pid -> start time
    quick_deaths = 0

    def spawn(respawned: bool = False) -> None:
        pid = os.fork()
        if pid == 0:
            # SIGHUP stays blocked until the worker's handler exists (lifecycle.serve): a
            # reload relayed to a worker still starting waits instead of killing it.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS - {signal.SIGHUP})
            code = 1
            try:
                code = run_worker(respawned)
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    for _ in range(workers):
        spawn()
    log.warning("ferryman: supervisor %d started %d workers", os.getpid(), workers)
    stopping = False
    deadline = 0.0
    while children:
        if stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                left = 1.0
            info = signal.sigtimedwait(_SIGNALS, left)
        else:
            info = signal.sigwaitinfo(_SIGNALS)
        if info is None:
            continue
        sig = info.si_signo
        if sig == signal.SIGHUP:
            for pid in children:
                os.kill(pid, signal.SIGHUP)
        elif sig in (signal.SIGTERM, signal.SIGINT) and not stopping:
            stopping = True
            deadline = time.monotonic() + grace + 5.0
            for pid in children:
                os.kill(pid, signal.SIGTERM)
        elif sig == signal.SIGCHLD:
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                started = children.pop(pid, None)
                if started is None or stopping:
                    continue
                code = os.waitstatus_to_exitcode(status)
                log.error("ferryman: worker %d exited (%d); restarting", pid, code)
                quick_deaths = quick_deaths + 1 if time.monotonic() - started < 1.0 else 0
                if quick_deaths > 5:
                    time.sleep(min(5.0, 0.2 * quick_deaths))  # crash loop: slow down
                spawn(respawned=True)
    return 0
