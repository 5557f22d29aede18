"""Forward control settings: YAML shape -> normalised values -> ForwardControl, errors
with field paths, and the notes of `ferryman check`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from pydantic import ValidationError

from ferryman.config.compile_forward_control import check_notes, compile_forward_control, file_stamps
from ferryman.config.schema import Forward
from ferryman.errors import ConfigError
from ferryman.pipeline.admit.credentials import Granted, Verify
from ferryman.pipeline.admit.htpasswd import verify_password
from ferryman.pipeline.admit.rules import AclRequest

APR1 = "$apr1$abcdefgh$rRdIxwY5XRHT4TMtBPZn.0"

CONFIG = """
auth:
  htpasswd: users.htpasswd
  group_file: groups
  groups: {lab: [bob]}
  cache_ttl: 10m
  max_failures: 5
rules:
  - {name: no-ads, deny: {domains_file: ads.txt}, message: Ads are blocked}
  - deny: {ports: 25}
  - auth:
  - allow: {groups: [staff], time: {from: "08:00", to: "20:00", tz: UTC}}
  - allow: {networks: [10.0.0.0/8]}
  - deny:
  - deny: {ports: [443]}
anonymity: elite
direct: [.corp.example]
direct_networks: [10.0.0.0/8]
"""


def write_files(tmp_path: Path) -> None:
    pw = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()
    (tmp_path / "users.htpasswd").write_text(f"alice:{pw}\nbob:{APR1}\n")
    (tmp_path / "groups").write_text("staff: alice ghost\n")
    (tmp_path / "ads.txt").write_text(".ads.example\n")


def compile_text(tmp_path: Path, text: str, clients: tuple[str, ...] = ("10.0.0.0/8",)) -> Any:
    cfg = Forward.model_validate(yaml.safe_load(text))
    return compile_forward_control(
        cfg.model_dump(mode="json"), base_dir=str(tmp_path), clients=list(clients),
        own=[("0.0.0.0", 3128)], proxy=("proxy.corp.example", 3128), source=str(tmp_path / "f.yaml"),
    )


def test_full_config_compiles_and_decides(tmp_path: Path) -> None:
    write_files(tmp_path)
    fc = compile_text(tmp_path, CONFIG)
    assert fc.auth is not None and fc.auth.cache_ttl == 600 and fc.auth.max_failures == 5
    assert fc.auth.db.groups_of("bob") == {"lab"}
    assert fc.auth.challenge == b'Basic realm="ferryman", charset="UTF-8"'
    assert fc.anonymity.level == "elite" and b"via" in fc.anonymity.strip
    assert "dnsDomainIs(host, suffixes[j])" in fc.pac and '".corp.example"' in fc.pac

    noon = 1_764_590_400.0  # 2025-12-01 12:00 UTC
    d = fc.rules.evaluate(AclRequest("10.0.0.1", "GET", "x.ads.example", 80), noon)
    assert (d.action, d.rule, d.message) == ("deny", "no-ads", "Ads are blocked")
    assert fc.rules.evaluate(AclRequest("10.0.0.1", "GET", "a.test", 80), noon).action == "auth"
    staff = AclRequest("10.0.0.1", "GET", "a.test", 80, user="alice", groups=frozenset({"staff"}))
    assert fc.rules.evaluate(staff, noon).action == "allow"

    cache, limiter = fc.auth.new_state()
    auth = fc.auth.authenticator(cache, limiter)
    step = auth.begin("10.0.0.1", b"Basic YWxpY2U6d29uZGVybGFuZA==", noon)  # alice:wonderland
    assert isinstance(step, Verify)
    ok = verify_password(step.entry, step.password)
    assert isinstance(auth.finish("10.0.0.1", step, ok, noon), Granted)


def test_check_notes(tmp_path: Path) -> None:
    write_files(tmp_path)
    notes = check_notes(compile_text(tmp_path, CONFIG))
    ht = tmp_path / "users.htpasswd"
    assert notes == [
        f"forward.auth.htpasswd: {ht}:2: user 'bob' has a weak apr1-MD5 hash; re-hash it with bcrypt"
        " (htpasswd -B)",
        f"forward.auth: group 'staff' names 'ghost', who is not in {ht}",
        "forward.rules[6] (forward.rules[6]) can never match: forward.rules[5] (forward.rules[5])"
        " matches every request it would, and comes first",
        "forward.clients holds non-loopback networks: destinations in loopback, private (RFC 1918), "
        "unique-local, link-local and 0.0.0.0/8 are refused unless a rule allows them by network",
    ]


def test_auth_without_an_auth_rule_applies_to_every_request(tmp_path: Path) -> None:
    write_files(tmp_path)
    text = "auth: {htpasswd: users.htpasswd}\nrules: [{deny: {ports: 25}}]\n"
    fc = compile_text(tmp_path, text, ("127.0.0.1/32",))
    assert [r.name for r in fc.rules.rules] == ["forward.auth", "forward.rules[0]"]
    assert fc.rules.evaluate(AclRequest("127.0.0.1", "GET", "a.test", 80), 0).action == "auth"
    assert fc.safety.laptop
    [note] = check_notes(fc)
    assert note.endswith("user 'bob' has a weak apr1-MD5 hash; re-hash it with bcrypt (htpasswd -B)")


def test_defaults_keep_todays_behaviour(tmp_path: Path) -> None:
    fc = compile_text(tmp_path, "{}", ("127.0.0.0/8", "::1/128"))
    assert fc.auth is None
    assert fc.anonymity.level == "anonymous" and not fc.anonymity.strip
    assert not fc.log_query
    assert fc.rules.evaluate(AclRequest("127.0.0.1", "GET", "a.test", 80), 0).action == "allow"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("rules: [{deny: {domain_regex: ['(']}}]", "forward.rules[0].deny.domain_regex[0]: invalid regular"),
        ("rules: [{deny: {time: {from: '25:00'}}}]", "forward.rules[0].deny.time.from: expected a time"),
        ("rules: [{deny: {domains_file: nope.txt}}]", "forward.rules[0].deny.domains_file: "),
        ("rules: [{allow: {users: [a]}}]", "forward.rules: a rule asks for or names users, but"),
        ("auth: {htpasswd: missing}", "forward.auth.htpasswd: "),
        ("auth: {htpasswd: bad.htpasswd}", "forward.auth.htpasswd: "),
        ("auth: {htpasswd: users.htpasswd, group_file: bad.groups}", "forward.auth.group_file: "),
        ("direct: ['bad domain']", "forward.direct: not a domain entry"),
    ],
)
def test_compile_errors_name_the_field_path(tmp_path: Path, text: str, error: str) -> None:
    write_files(tmp_path)
    (tmp_path / "bad.htpasswd").write_text("alice:plaintext\n")
    (tmp_path / "bad.groups").write_text("no colon here\n")
    with pytest.raises(ConfigError) as ei:
        compile_text(tmp_path, text)
    assert any(e.startswith(error) for e in ei.value.errors), ei.value.errors
    if "bad." in text:
        assert any(":1: " in e for e in ei.value.errors)


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"rules": [{"allow": {}, "deny": {}}]}, ("rules", 0)),
        ({"rules": [{"allow": {}, "message": "x"}]}, ("rules", 0)),
        ({"rules": [{"deny": {"hosts": ["a"]}}]}, ("rules", 0, "deny", "hosts")),
        ({"rules": [{"deny": {"networks": ["nope"]}}]}, ("rules", 0, "deny", "networks")),
        ({"anonymity": "paranoid"}, ("anonymity",)),
        ({"auth": {"htpasswd": "f", "realm": 'a"b'}}, ("auth", "realm")),
        ({"auth": {"htpasswd": "f", "max_failures": 0}}, ("auth", "max_failures")),
        ({"auth": {}}, ("auth", "htpasswd")),
    ],
)
def test_schema_errors_carry_field_paths(data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as ei:
        Forward.model_validate(data)
    locs = [tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p)) for e in ei.value.errors()]
    assert loc in locs, locs


def test_today_rules_keep_their_shape() -> None:
    match = {"domains": ["a.test"], "domains_file": "f", "networks": ["10.0.0.0/8"], "ports": [25],
             "methods": ["GET"]}
    old = {"rules": [{"name": "x", "deny": match}]}
    Forward.model_validate(old)


def test_file_stamps_change_with_the_file(tmp_path: Path) -> None:
    f = tmp_path / "users"
    f.write_text("a")
    before = file_stamps([str(f), str(tmp_path / "missing")])
    assert before[1] == (str(tmp_path / "missing"), -1, -1)
    f.write_text("ab")
    assert file_stamps([str(f), str(tmp_path / "missing")]) != before
