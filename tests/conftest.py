from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procs import Ferryman, Nginx, run_ferryman, run_nginx


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """One real nginx origin on loopback for the whole session."""
    with run_nginx(tmp_path_factory.mktemp("nginx")) as ng:
        yield ng


@pytest.fixture
def ferryman(tmp_path: Path) -> Iterator[Ferryman]:
    """A ferryman forward proxy with the default policy and a JSON access log."""
    with run_ferryman(tmp_path) as fm:
        yield fm
