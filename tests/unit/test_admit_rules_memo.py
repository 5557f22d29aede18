"""What the rules remember between requests (issue 12's benchmark: hosts, paths and the
minute repeat): the answers stay those of a fresh evaluation, the costly searches (a
domains file, regexes, the local time) run once per host, path or minute, and the
memos stay bounded."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ferryman.pipeline.admit import conditions
from ferryman.pipeline.admit.conditions import HOST_MEMO, MEMO_PATH_SIZE, Facts
from ferryman.pipeline.admit.domainset import DomainSet
from ferryman.pipeline.admit.rules import AclRequest, RuleSet, compile_rules

TUE_1030 = datetime(2026, 12, 1, 10, 30, tzinfo=UTC).timestamp()


def rs(*rules: dict[str, Any], tmp: Path | None = None) -> RuleSet:
    return compile_rules(list(rules), base_dir=str(tmp or "."))  # type: ignore[arg-type]


def action(ruleset: RuleSet, now: float = TUE_1030, **kw: Any) -> str:
    base: dict[str, Any] = {"client": "10.1.2.3", "method": "GET", "host": "www.example.com", "port": 80,
                            "path": "/index.html"}
    base.update(kw)
    return ruleset.evaluate(AclRequest(**base), now).action


def test_domains_file_and_regexes_are_searched_once_per_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "block.txt").write_text("ads.example\n.tracker.example\n")
    r = rs(
        {"deny": {"domains_file": "block.txt"}},
        {"deny": {"domain_regex": [r"^shop[0-9]+\."]}},
        {"allow": {}},
        tmp=tmp_path,
    )
    searched: list[str] = []
    real = DomainSet.matches_parts

    def counting(self: DomainSet, host: str, parents: tuple[str, ...]) -> bool:
        searched.append(host)
        return real(self, host, parents)

    monkeypatch.setattr(DomainSet, "matches_parts", counting)
    for _ in range(3):
        assert action(r, host="www.example.com") == "allow"
        assert action(r, host="x.tracker.example") == "deny"
        assert action(r, host="shop12.example") == "deny"
        assert action(r, host="WWW.Example.COM.") == "allow"  # the same host, once normalised
    assert sorted(searched) == ["shop12.example", "www.example.com", "x.tracker.example"]


def test_host_memo_is_bounded_and_answers_stay_right() -> None:
    r = rs({"deny": {"domain_regex": [r"^bad"]}}, {"deny": {"domains": [".a.test", "b.test"]}})
    for i in range(HOST_MEMO + 50):
        assert action(r, host=f"bad{i}.test" if i % 2 else f"h{i}.a.test") == "deny"
    dest = r.rules[0].destination
    assert dest is not None and 0 < len(dest._by_host) <= HOST_MEMO
    assert action(r, host="good.test") == "allow" and action(r, host="b.test") == "deny"


def test_networks_still_wait_for_the_address_after_the_name_is_remembered() -> None:
    r = rs({"allow": {"domains": ["ok.test"], "networks": ["10.0.0.0/8"]}}, {"deny": {}})
    for _ in range(2):
        assert action(r, host="ok.test") == "allow"
        assert action(r, host="other.test") == "resolve"
        assert action(r, host="other.test", address="10.9.9.9") == "allow"
        assert action(r, host="other.test", address="192.0.2.1") == "deny"


def test_time_window_is_worked_out_once_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rs({"deny": {"time": {"from": "10:30", "to": "10:31", "tz": "UTC"}}})
    calls: list[float] = []
    real = Facts.local_time

    def counting(self: Facts, tz: Any) -> datetime:
        calls.append(self.now)
        return real(self, tz)

    monkeypatch.setattr(conditions.Facts, "local_time", counting)
    assert action(r, TUE_1030) == "deny"
    assert action(r, TUE_1030 + 59.9) == "deny"
    assert len(calls) == 1  # the same minute: remembered
    assert action(r, TUE_1030 + 60) == "allow"  # the next minute is worked out
    assert action(r, TUE_1030 - 0.1) == "allow"  # and the one before (a clock step back)
    assert action(r, TUE_1030 + 1) == "deny"
    assert len(calls) == 4


@pytest.mark.parametrize(
    ("spec", "headers", "expected"),
    [
        ({"X-Tor": True}, [(b"x-tor", b"1")], "deny"),
        ({"X-Tor": True}, [(b"X-Tor-Not", b"1"), (b"Accept", b"*/*")], "allow"),
        ({"X-Tor": False}, [(b"X-TOR", b"")], "allow"),
        ({"X-Tor": False}, [(b"Accept", b"*/*")], "deny"),
        ({"User-Agent": "curl"}, [(b"User-Agent", b"wget"), (b"user-agent", b"curl/8")], "deny"),
        ({"User-Agent": "curl"}, [(b"User-Agent", b"wget")], "allow"),
        ({"User-Agent": "curl"}, [], "allow"),
    ],
)
def test_header_conditions(spec: dict[str, Any], headers: list[tuple[bytes, bytes]], expected: str) -> None:
    assert action(rs({"deny": {"headers": spec}}), headers=headers) == expected


def test_path_regex_memo_keeps_answers_and_skips_long_paths() -> None:
    r = rs({"deny": {"path_regex": [r"\.exe$"]}, "name": "exe"})
    for _ in range(2):
        assert action(r, path="/a/setup.exe") == "deny"
        assert action(r, path="/a/setup.txt") == "allow"
    long_path = "/" + "x" * MEMO_PATH_SIZE + ".exe"
    assert action(r, path=long_path) == "deny"
    path_cond = r.rules[0].conditions[0]
    assert isinstance(path_cond, conditions.Path)
    assert long_path not in path_cond._by_path and "/a/setup.exe" in path_cond._by_path


def test_rules_whose_destination_cannot_match_the_host_are_not_tested(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tested: list[bytes] = []
    real = conditions.Header.test

    def counting(self: conditions.Header, ev: Facts) -> bool:
        tested.append(self.name)
        return real(self, ev)

    monkeypatch.setattr(conditions.Header, "test", counting)
    r = rs(
        {"deny": {"domains": [".tor.test"], "headers": {"X-Tor": True}}, "name": "tor"},
        {"deny": {"headers": {"X-Bad": True}}, "name": "bad"},
    )
    for _ in range(2):
        assert action(r, host="www.example.com", headers=[(b"X-Tor", b"1")]) == "allow"
    assert tested == [b"x-bad", b"x-bad"]  # the tor rule is left out for www.example.com
    assert action(r, host="a.tor.test", headers=[(b"X-Tor", b"1")]) == "deny"
    assert action(r, host="a.tor.test", headers=[(b"X-Bad", b"1")]) == "deny"
    assert action(r, host="a.tor.test") == "allow"


def test_per_host_steps_decide_as_the_rules_one_by_one() -> None:
    r = compile_rules([
        {"auth": {"domains": [".private.test"]}, "name": "private"},
        {"deny": {"domains": ["a.test"]}, "name": "a"},
        {"deny": {"ports": [25]}, "name": "smtp"},
        {"deny": {"domains": [".b.test"]}, "name": "b"},
        {"allow": {"domains": ["net.test"], "networks": ["10.0.0.0/8"]}, "name": "net"},
        {"deny": {"domain_regex": ["^x"], "methods": ["POST"]}, "name": "x-post"},
        {"deny": {"domains": ["c.test"]}, "name": "c"},
        {"deny": {"domains": [".d.test"]}, "name": "d"},
        {"allow": {"users": ["ann"]}, "name": "ann"},
    ], default="deny")

    def name(**kw: Any) -> str:
        base: dict[str, Any] = {"client": "10.1.2.3", "method": "GET", "host": "www.example.com", "port": 80}
        base.update(kw)
        return r.evaluate(AclRequest(**base), TUE_1030).rule

    for _ in range(2):  # fresh, then from the memo
        assert name(host="s.private.test") == "private"
        assert name(host="s.private.test", user="ann") == "net"  # waits for the address
        assert name(host="s.private.test", user="ann", address="192.0.2.1") == "ann"
        assert name(host="a.test") == "a" and name(host="a.test", port=25) == "a"
        assert name(host="other.test", port=25) == "smtp"
        assert name(host="q.b.test") == "b" and name(host="b.test") == "b"
        assert name(host="net.test") == "net"
        assert name(host="10.1.1.1") == "net" and name(host="192.0.2.1") == "default"
        assert name(host="other.test") == "net"  # waits for the address (resolve)
        assert name(host="xy.test", method="POST") == "net"
        assert name(host="xy.test", method="POST", address="192.0.2.1") == "x-post"
        assert name(host="c.test", address="192.0.2.1") == "c"
        assert name(host="e.d.test", address="192.0.2.1") == "d"
        assert name(host="e.test", address="192.0.2.1", user="ann") == "ann"
        assert name(host="e.test", address="192.0.2.1") == "default"
