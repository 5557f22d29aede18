"""domains_file lines: inline comments count, a line that is no domain stops the config."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.helpers.origin import canned, serve
from tests.helpers.procs import base_config, ferryman_cli, run_ferryman
from tests.helpers.rawhttp import assert_error_and_closed, exchange
from tests.helpers.wait import wait_for

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_inline_comments_are_part_of_the_format(tmp_path: Path) -> None:
    (tmp_path / "block.txt").write_text("# blocklist\nlocalhost   # the loopback name\nads.example # ads\n")
    rules = [{"name": "blocklist", "deny": {"domains_file": "block.txt"}}]
    with serve(canned(OK)) as origin, run_ferryman(tmp_path, forward={"rules": rules}) as fm:
        url = b"http://localhost:%d/x" % origin.port
        resp = exchange(fm.port, b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % url)
        assert_error_and_closed(resp, 403)
        assert b"(rule: blocklist)" in resp.body
        assert origin.connections == 0


def _bad_setup(tmp_path: Path) -> Path:
    (tmp_path / "block.txt").write_text("good.example\n\n0.0.0.0 ads.example\n")
    rules = [{"deny": {"domains_file": "block.txt"}}]
    cfg = base_config(1, tmp_path / "access.log", forward={"rules": rules})
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_check_names_the_file_and_line(tmp_path: Path) -> None:
    path = _bad_setup(tmp_path)
    out = ferryman_cli(tmp_path, "check", "-c", str(path))
    assert out.returncode == 2, out
    assert f"forward.rules[0].deny.domains_file: {tmp_path / 'block.txt'} line 3: " in out.stderr
    assert "'0.0.0.0 ads.example'" in out.stderr


def test_start_up_refuses_the_file(tmp_path: Path) -> None:
    path = _bad_setup(tmp_path)
    out = ferryman_cli(tmp_path, "run", "-c", str(path))
    assert out.returncode != 0
    assert f"{tmp_path / 'block.txt'} line 3: " in out.stderr


def test_a_reload_with_a_bad_line_is_refused(tmp_path: Path) -> None:
    (tmp_path / "block.txt").write_text("ads.example # ads\n")
    rules = [{"name": "bl", "deny": {"domains_file": "block.txt"}}]
    with run_ferryman(tmp_path, forward={"rules": rules}) as fm:
        (tmp_path / "block.txt").write_text("ads.example # ads\nnot a domain\n")
        fm.reload()
        wait_for(lambda: "reload refused" in fm.stderr(), 10, lambda: repr(fm.stderr()))
        assert "block.txt line 2: " in fm.stderr()
        resp = exchange(fm.port, b"GET http://ads.example/ HTTP/1.1\r\nHost: ads.example\r\n\r\n")
        assert_error_and_closed(resp, 403)  # the old rules keep serving
