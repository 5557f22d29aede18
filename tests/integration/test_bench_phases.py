"""`bench/phases.py` (the phase runner's per-request cost, quoted in notes and bench/README)
still runs against the current code: a tiny run, every case printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.procs import child_env

REPO = Path(__file__).resolve().parents[2]


def test_the_phase_runner_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "phases.py"), "--number", "5", "--rounds", "1"],
        capture_output=True, text=True, timeout=120, env=child_env(), check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["case", "us/request"]
    cases = [line for line in lines[1:] if line.strip()]
    assert len(cases) == 13, out.stdout
    assert all(float(line.split()[-1]) > 0 for line in cases)
