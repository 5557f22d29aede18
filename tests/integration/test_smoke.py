from __future__ import annotations

import json
import subprocess

from tests.helpers.procs import Ferryman, Nginx


def test_curl_through_forward_proxy(ferryman: Ferryman, nginx: Nginx) -> None:
    out = subprocess.run(
        ["curl", "-sS", "-x", ferryman.proxy, f"{nginx.url}/small"],
        capture_output=True, timeout=10, check=True,
    )
    assert out.stdout == b"hello from nginx\n"
    ferryman.proc.send_signal(15)
    ferryman.proc.wait(10)
    lines = [json.loads(x) for x in ferryman.access_log().splitlines()]
    assert lines[-1]["status"] == 200 and lines[-1]["target"].endswith("/small")
