"""Certificates reload with the config, on the same listening socket."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import trustme

from tests.helpers.procs import free_port, run_ferryman
from tests.helpers.wait import wait_for


def peer_serial(port: int, ca: trustme.CA) -> int:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.test") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_new_certificate_served_after_sighup_and_bad_one_refused(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "site.pem"
    ca.issue_cert("a.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    port = free_port()
    listener = {
        "listen": f"127.0.0.1:{port}", "mode": "reverse",
        "tls": {"certificates": [{"cert": str(pem), "key": str(pem)}]},
    }
    with run_ferryman(
        tmp_path, listeners=[listener], routes=[{"respond": {"body": "ok"}}]
    ) as fm:
        first = peer_serial(port, ca)
        ca.issue_cert("a.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
        fm.reload()
        wait_for(lambda: peer_serial(port, ca) != first, what="the new certificate served")
        second = peer_serial(port, ca)
        assert "configuration reloaded" in fm.stderr()

        pem.write_text("not a certificate\n")
        fm.reload()
        wait_for(lambda: "reload refused" in fm.stderr(), what="reload refused")
        assert peer_serial(port, ca) == second  # the old certificate keeps serving
