"""Check listener certificates while validating, and learn the names they serve.

Runs in the validator child (it imports `cryptography`); the serving process
gets the names in the normalised config and only builds SSL contexts.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID


def _names(cert_path: str) -> list[str]:
    with open(cert_path, "rb") as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        pass
    if not names:
        names = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names


def check_listener_tls(data: dict[str, Any], base_dir: str) -> list[str]:
    """Resolve paths, load each pair, record names; return error lines with field paths."""
    errors: list[str] = []
    for i, lst in enumerate(data.get("listeners", [])):
        tls = lst.get("tls")
        if not tls:
            continue
        for j, c in enumerate(tls["certificates"]):
            where = f"listeners[{i}].tls.certificates[{j}]"
            for field in ("cert", "key"):
                path = c[field] if os.path.isabs(c[field]) else os.path.join(base_dir, c[field])
                c[field] = path
                if not os.access(path, os.R_OK):
                    errors.append(f"{where}.{field}: cannot read {path}")
            if errors:
                continue
            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(c["cert"], c["key"])
                c["names"] = _names(c["cert"])
            except (ssl.SSLError, ValueError, OSError) as exc:
                errors.append(f"{where}: certificate and key do not load: {exc}")
    return errors
