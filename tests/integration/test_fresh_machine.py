"""`make test` and `.ci/run` on a machine without the system packages the tests run.

Nothing is uninstalled: each test runs the real Makefile, `.ci/run` and scripts/system-deps with a
PATH that holds only what the test puts there, and a fake venv whose ruff / mypy / pytest only
record that they ran. A fake `apt-get` stands for the real one when installing is tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "scripts" / "system-packages.txt"
MAKE = shutil.which("make") or "/usr/bin/make"


def listed() -> list[tuple[str, str]]:
    """(package, command) pairs of the shared list."""
    pairs = []
    for line in PACKAGES.read_text().splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            pairs.append((fields[0], fields[1] if len(fields) > 1 else fields[0]))
    return pairs


def stub(path: Path, body: str = "exit 0") -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


class Machine:
    """A bare PATH, an empty sbin, and a fake venv whose tools log their names to ``ran``."""

    def __init__(self, tmp: Path) -> None:
        self.bin = tmp / "bin"
        self.sbin = tmp / "sbin"
        self.venv = tmp / "venv"
        self.ran = tmp / "ran.log"
        self.apt_log = tmp / "apt.log"
        for d in (self.bin, self.sbin, self.venv / "bin"):
            d.mkdir(parents=True)
        stub(self.venv / "bin" / "python")
        for tool in ("ruff", "mypy", "pytest"):
            stub(self.venv / "bin" / tool, f'echo {tool} >> "{self.ran}"')
        (self.venv / ".installed").touch()  # newer than pyproject.toml and bin/python
        self.ran.touch()

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": str(self.bin), "FERRYMAN_SBIN_DIRS": str(self.sbin), "HOME": "/nonexistent"}
        # command-line variables through MAKEFLAGS reach the `make test` that .ci/run starts, too
        env["MAKEFLAGS"] = f"VENV={self.venv}"
        env.update(extra)
        return env

    def provide(self, *commands: str) -> None:
        for cmd in commands:
            stub(self.bin / cmd.split(":")[0])  # python3:ensurepip: a python3 whose imports work

    def fake_apt_get(self) -> None:
        """An apt-get that logs its arguments and 'installs' every listed command."""
        creates = "\n".join(
            f'printf \'#!/bin/sh\\nexit 0\\n\' > "{self.bin}/{cmd}"; /bin/chmod +x "{self.bin}/{cmd}"'
            for cmd in {c.split(":")[0] for _, c in listed()}
        )
        stub(self.bin / "apt-get", f'echo "$@" >> "{self.apt_log}"\ncase "$1" in install) {creates};; esac')

    def run(self, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), cwd=ROOT, env=self.env(**extra), capture_output=True, text=True, timeout=60,
        )

    def tools_ran(self) -> list[str]:
        return self.ran.read_text().split()


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def install_line(out: str) -> str:
    lines = [x.strip() for x in out.splitlines() if "apt-get install" in x]
    assert len(lines) == 1, out
    return lines[0]


def test_list_names_every_package_the_suite_runs() -> None:
    packages = {pkg for pkg, _ in listed()}
    assert {"curl", "nginx-light", "redis-server", "wrk", "haproxy", "python3-venv"} <= packages


def test_make_test_without_packages_prints_the_install_command_and_runs_nothing(machine: Machine) -> None:
    out = machine.run(MAKE, "test")
    assert out.returncode != 0
    line = install_line(out.stderr)
    for pkg, _ in listed():
        assert pkg in line.split()
    assert line.startswith(("apt-get update && apt-get install -y", "sudo apt-get update && sudo apt-get"))
    assert machine.tools_ran() == []  # stopped before ruff, mypy or pytest


def test_make_test_names_only_the_missing_packages(machine: Machine) -> None:
    machine.provide(*(cmd for pkg, cmd in listed() if pkg != "redis-server"))
    out = machine.run(MAKE, "test")
    assert out.returncode != 0
    assert install_line(out.stderr).split("install -y", 1)[1].split() == ["redis-server"]
    assert machine.tools_ran() == []


def test_commands_in_sbin_count_as_installed(machine: Machine) -> None:
    """nginx and haproxy live in /usr/sbin, off a normal user's PATH: that is still installed."""
    for _, cmd in listed():
        if ":" in cmd:
            machine.provide(cmd)  # an interpreter is looked for on PATH only
        else:
            stub(machine.sbin / cmd)
    out = machine.run(MAKE, "test")
    assert out.returncode == 0, out.stderr
    assert machine.tools_ran() == ["ruff", "mypy", "pytest"]


def test_make_test_runs_the_suite_when_everything_is_there(machine: Machine) -> None:
    machine.provide(*(cmd for _, cmd in listed()))
    machine.fake_apt_get()
    out = machine.run(MAKE, "test")
    assert out.returncode == 0, out.stderr
    assert machine.tools_ran() == ["ruff", "mypy", "pytest"]
    assert not machine.apt_log.exists()  # nothing to install, apt-get never called


def test_make_test_installs_as_root_with_apt_get(machine: Machine) -> None:
    machine.fake_apt_get()
    out = machine.run(MAKE, "test")
    if os.geteuid() == 0:
        assert out.returncode == 0, out.stderr
        calls = machine.apt_log.read_text().splitlines()
        assert calls[0].split() == ["update", "-qq"]
        assert calls[1].split()[:3] == ["install", "-y", "-qq"]
        assert calls[1].split()[3:] == [pkg for pkg, _ in listed()]
        assert machine.tools_ran() == ["ruff", "mypy", "pytest"]
    else:  # not root: never sudo behind the user's back, print the command instead
        assert out.returncode != 0
        assert install_line(out.stderr).startswith("sudo apt-get update && sudo apt-get install -y")
        assert not machine.apt_log.exists()
        assert machine.tools_ran() == []


def test_check_mode_never_installs(machine: Machine) -> None:
    machine.fake_apt_get()
    out = machine.run("scripts/system-deps", "--check")
    assert out.returncode == 1
    assert "curl" in install_line(out.stderr).split()
    assert not machine.apt_log.exists()


def test_ci_run_and_make_test_share_the_list(machine: Machine, tmp_path: Path) -> None:
    """One more line in the list is one more package for both entry points."""
    extra = tmp_path / "packages.txt"
    # a package no machine has (not one from the real list, which this test provides)
    extra.write_text(PACKAGES.read_text() + "ferryman-extra-pkg  ferryman-extra-tool\n")
    # what .ci/run itself needs from PATH
    for tool in ("bash", "dirname", "make"):
        os.symlink(shutil.which(tool) or f"/usr/bin/{tool}", machine.bin / tool)
    machine.provide(*(cmd for _, cmd in listed()))
    for argv in (["bash", ".ci/run"], [MAKE, "test"]):
        out = machine.run(*argv, FERRYMAN_SYSTEM_PACKAGES=str(extra))
        assert out.returncode != 0, argv
        assert install_line(out.stderr).split("install -y", 1)[1].split() == ["ferryman-extra-pkg"], argv
        assert machine.tools_ran() == [], argv
    out = machine.run("bash", ".ci/run")  # the real list: all there, so .ci/run goes on to `make test`
    assert out.returncode == 0, out.stderr
    assert machine.tools_ran() == ["ruff", "mypy", "pytest"]


def test_python_venv_is_checked_by_importing_ensurepip(machine: Machine) -> None:
    """python3-venv installs no command: a python3 that cannot import ensurepip means it is missing."""
    machine.provide(*(cmd for _, cmd in listed()))
    stub(machine.bin / "python3", 'case "$2" in "import ensurepip") exit 1;; esac; exit 0')
    out = machine.run(MAKE, "test")
    assert out.returncode != 0
    assert install_line(out.stderr).split("install -y", 1)[1].split() == ["python3-venv"]
