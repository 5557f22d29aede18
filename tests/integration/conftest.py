"""Fixtures shared by the loopback integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.origin import Origin, Tls, make_tls, serve, tls_http_handler


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A trustme CA and a server certificate for localhost / 127.0.0.1."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_origin(tls: Tls) -> Iterator[Origin]:
    """A loopback HTTPS origin (keep-alive, answers every GET with TLS_BODY)."""
    with serve(tls_http_handler, ssl_ctx=tls.server_ctx) as origin:
        yield origin
