"""The validator entry point (run in-process here): JSON out, or errors and exit 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ferryman.config.compile import build_plan, compile_config
from ferryman.config.validate import main


def test_valid_file_prints_normalised_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("timeouts: {client_idle: 2m}\nlimits: {max_body_size: 1KiB}\n")
    assert main(["--file", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert data["timeouts"]["client_idle"] == 120.0
    assert data["limits"]["max_body_size"] == 1024
    # What the child prints is exactly what the compiler consumes.
    assert compile_config(data, str(path)) == build_plan(str(path))


def test_invalid_file_prints_errors_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("forward:\n  rules:\n    - deny: {domainz: [x]}\nbogus: 1\n")
    assert main(["--file", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: forward.rules[0].deny.domainz: unknown setting",
        f"{path}: bogus: unknown setting",
    ]


def test_stdin_mapping_is_validated_under_the_given_source(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"forward": {"via": False}})))
    assert main(["--stdin", "<command line>"]) == 0
    assert json.loads(capsys.readouterr().out)["forward"]["via"] is False

    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"listeners": []})))
    assert main(["--stdin", "<command line>"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("<command line>: ")
    assert "at least one listener" in err


def test_file_or_stdin_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    capsys.readouterr()
