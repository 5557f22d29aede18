"""YAML -> validated Config (load.py + schema.py): defaults, units, error paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ferryman.config.hostport import split_hostport
from ferryman.config.load import load_file, load_text, normalise, validate
from ferryman.config.schema import Config
from ferryman.errors import ConfigError


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "test.yaml")
    assert info.value.source == "test.yaml"
    return info.value.errors


# -- defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}"])
def test_empty_file_gives_safe_defaults(text: str) -> None:
    cfg = load_text(text, "test.yaml")
    assert len(cfg.listeners) == 1
    assert cfg.listeners[0].listen == "127.0.0.1:3128"
    assert cfg.listeners[0].mode == "forward"
    # Never an open relay by default: loopback clients only.
    assert cfg.forward.clients == ["127.0.0.0/8", "::1/128"]
    assert cfg.forward.connect_ports == [443]
    assert cfg.forward.rules == []
    assert cfg.forward.via is True
    assert cfg.forward.parent is None
    assert cfg == Config()


def test_default_limits_and_timeouts() -> None:
    cfg = Config()
    assert cfg.limits.max_header_size == 32 * 1024
    assert cfg.limits.max_url_length == 8 * 1024
    assert cfg.limits.max_headers == 100
    assert cfg.limits.max_body_size == 0
    assert cfg.timeouts.client_header == 10.0
    assert cfg.timeouts.upstream_connect == 5.0


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.forward = cfg.forward  # type: ignore[misc]


def test_top_level_must_be_a_mapping() -> None:
    assert errors_of("- 1\n- 2\n") == ["(top level): expected a mapping of settings"]
    assert errors_of("just a string") == ["(top level): expected a mapping of settings"]


def test_validate_accepts_none_as_empty() -> None:
    assert validate(None, "x") == Config()


def test_normalise_gives_plain_data_in_seconds_and_bytes() -> None:
    cfg = load_text("timeouts: {client_header: 1.5m}\nlimits: {max_body_size: 2KiB}\n", "t")
    data = normalise(cfg)
    assert data["timeouts"]["client_header"] == 90.0
    assert data["limits"]["max_body_size"] == 2048
    assert data["listeners"] == [
        {
            "name": None, "listen": "127.0.0.1:3128", "mode": "forward", "backlog": 1024,
            "tls": None, "proxy_protocol": False,
        }
    ]
    assert validate(data, "again") == cfg  # the normalised form validates to the same


# -- unknown keys -----------------------------------------------------------------------


def test_unknown_nested_key_is_reported_with_field_path() -> None:
    text = "forward:\n  rules:\n    - deny: {domainz: [ads.example]}\n"
    assert errors_of(text) == ["forward.rules[0].deny.domainz: unknown setting"]


def test_unknown_top_level_key() -> None:
    assert errors_of("listners: []\n") == ["listners: unknown setting"]


def test_unknown_key_in_list_item() -> None:
    text = "listeners:\n  - {listen: '127.0.0.1:3128'}\n  - {listen: '127.0.0.1:3129', prot: 1}\n"
    assert errors_of(text) == ["listeners[1].prot: unknown setting"]


def test_every_error_is_reported_at_once() -> None:
    text = "bogus: 1\ntimeouts: {client_header: soon}\nforward: {via: true, extra: 2}\n"
    errs = errors_of(text)
    assert "bogus: unknown setting" in errs
    assert "forward.extra: unknown setting" in errs
    assert any(e.startswith("timeouts.client_header: ") for e in errs)
    assert len(errs) == 3


def test_config_error_render_prefixes_source() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("a: 1\nb: 2\n", "/etc/ferryman.yaml")
    assert info.value.render() == (
        "/etc/ferryman.yaml: a: unknown setting\n/etc/ferryman.yaml: b: unknown setting"
    )
    assert str(info.value).startswith("/etc/ferryman.yaml: ")


def test_rule_needs_exactly_one_action() -> None:
    both = "forward:\n  rules:\n    - {allow: {}, deny: {}}\n"
    neither = "forward:\n  rules:\n    - {allow: {}}\n    - {name: x}\n"
    assert errors_of(both) == ["forward.rules[0]: a rule needs exactly one of 'allow', 'deny' or 'auth'"]
    assert errors_of(neither) == [
        "forward.rules[1]: a rule needs exactly one of 'allow', 'deny' or 'auth'"
    ]


def test_upgrade_protocols_default_and_h2c_refused() -> None:
    ups = "upstreams: {a: {servers: [{url: 'http://127.0.0.1:1'}]}}\n"
    cfg = load_text("routes: [{upstream: a}]\n" + ups, "t")
    assert cfg.forward.upgrade_protocols == ["websocket"]
    assert cfg.routes[0].upgrade_protocols == ["websocket"]
    assert load_text("forward: {upgrade_protocols: [WebSocket, foo]}", "t").forward.upgrade_protocols == [
        "websocket", "foo",
    ]
    [err] = errors_of("forward: {upgrade_protocols: [websocket, H2C]}")
    assert err.startswith("forward.upgrade_protocols: ") and "h2c is never forwarded" in err
    [err] = errors_of("routes: [{upstream: a, upgrade_protocols: [h2c]}]\n" + ups)
    assert err.startswith("routes[0].upgrade_protocols: "), err
    [err] = errors_of("forward: {upgrade_protocols: ['web socket']}")
    assert "not a protocol name" in err


# -- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("' 3 s '", 3.0),
        ("'10'", 10.0),
        ("7", 7.0),
        ("0.25", 0.25),
    ],
)
def test_durations(value: str, seconds: float) -> None:
    cfg = load_text(f"timeouts: {{client_idle: {value}}}\n", "t")
    assert cfg.timeouts.client_idle == seconds


@pytest.mark.parametrize(
    "value",
    ["10x", "soon", "1d", "-1", "0", "0s", "true", "'1 0s'", "''", "[1]", "-5s"],
)
def test_bad_durations_name_the_field(value: str) -> None:
    errs = errors_of(f"timeouts: {{upstream_idle: {value}}}\n")
    assert len(errs) == 1
    assert errs[0].startswith("timeouts.upstream_idle: ")


def test_bad_duration_message_shows_expected_form() -> None:
    (err,) = errors_of("pool: {idle_timeout: 10x}\n")
    assert err == "pool.idle_timeout: expected a duration such as 10s, 500ms or 2m, got '10x'"


def test_zero_duration_message() -> None:
    assert errors_of("dns: {ttl: 0}\n") == ["dns.ttl: a duration must be a positive, finite number"]


def test_nan_duration_is_rejected() -> None:
    errs = errors_of("timeouts: {client_header: .nan}\n")
    assert errs[0].startswith("timeouts.client_header: ")


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("4096", 4096),
        ("'4096'", 4096),
        ("100b", 100),
        ("1k", 1024),
        ("1K", 1024),
        ("1kb", 1000),
        ("64KiB", 65536),
        ("10MB", 10_000_000),
        ("10MiB", 10 * 1024 * 1024),
        ("'2 GiB'", 2 * 1024**3),
        ("3g", 3 * 1024**3),
        ("0", 0),
    ],
)
def test_sizes(value: str, size: int) -> None:
    cfg = load_text(f"limits: {{max_body_size: {value}}}\n", "t")
    assert cfg.limits.max_body_size == size


@pytest.mark.parametrize("value", ["1.5GiB", "-1", "true", "12 parsecs", "KiB", "1.0", "10TB"])
def test_bad_sizes_name_the_field(value: str) -> None:
    errs = errors_of(f"limits: {{max_header_size: {value}}}\n")
    assert len(errs) == 1
    assert errs[0].startswith("limits.max_header_size: ")


def test_negative_size_message() -> None:
    assert errors_of("limits: {max_body_size: -1}\n") == [
        "limits.max_body_size: a size cannot be negative"
    ]


# -- invalid YAML -------------------------------------------------------------------------


def test_invalid_yaml_reports_line_number() -> None:
    text = "forward:\n  clients: [10.0.0.0/8\nlimits: {}\n"
    (err,) = errors_of(text)
    assert err.startswith("line 3, column ")
    assert "invalid YAML" in err


def test_invalid_yaml_tab_indentation() -> None:
    (err,) = errors_of("forward:\n\tvia: false\n")
    assert err.startswith("line 2, column ")
    assert "invalid YAML" in err


# -- listeners ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("127.0.0.1:3128", "127.0.0.1:3128"),
        (":3128", "0.0.0.0:3128"),
        ("'[::1]:8080'", "'[::1]:8080'"),
    ],
)
def test_duplicate_listeners_are_rejected(a: str, b: str) -> None:
    (err,) = errors_of(f"listeners:\n  - listen: {a}\n  - listen: {b}\n")
    assert "listeners[1] and listeners[0] both listen on" in err


def test_distinct_listeners_are_accepted() -> None:
    cfg = load_text(
        "listeners:\n  - {listen: '127.0.0.1:3128'}\n  - {listen: '127.0.0.1:3129'}\n"
        "  - {listen: '[::1]:3128'}\n",
        "t",
    )
    assert [lst.listen for lst in cfg.listeners] == [
        "127.0.0.1:3128", "127.0.0.1:3129", "[::1]:3128",
    ]


def test_at_least_one_listener() -> None:
    (err,) = errors_of("listeners: []\n")
    assert "at least one listener" in err


@pytest.mark.parametrize(
    ("listen", "fragment"),
    [
        ("foo", "missing port"),
        ("'::1:3128'", "need brackets"),
        ("'a:70000'", "out of range"),
        ("'a:0'", "out of range"),
        ("'a:http'", "must be a number"),
        ("'[::1:3128'", "unclosed"),
    ],
)
def test_bad_listen_address_names_the_field(listen: str, fragment: str) -> None:
    (err,) = errors_of(f"listeners:\n  - listen: {listen}\n")
    assert err.startswith("listeners[0].listen: ")
    assert fragment in err


def test_listener_mode_is_checked() -> None:
    (err,) = errors_of("listeners:\n  - {listen: ':80', mode: sideways}\n")
    assert err.startswith("listeners[0].mode: ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:3128", ("127.0.0.1", 3128)),
        (":8080", ("0.0.0.0", 8080)),
        ("[::1]:443", ("::1", 443)),
        ("  example.com:80 ", ("example.com", 80)),
    ],
)
def test_split_hostport(value: str, expected: tuple[str, int]) -> None:
    assert split_hostport(value) == expected


def test_split_hostport_default_port() -> None:
    assert split_hostport("proxy.lan", 3128) == ("proxy.lan", 3128)
    assert split_hostport("[::1]", 3128) == ("::1", 3128)
    with pytest.raises(ValueError, match="missing port"):
        split_hostport("proxy.lan")


# -- forward section ------------------------------------------------------------------------


def test_bad_client_network_names_the_field() -> None:
    (err,) = errors_of("forward: {clients: [10.0.0.0/8, not-a-net]}\n")
    assert err.startswith("forward.clients")
    assert "not-a-net" in err


def test_bad_rule_network_names_the_field() -> None:
    (err,) = errors_of("forward:\n  rules:\n    - deny: {networks: [300.0.0.0/8]}\n")
    assert err.startswith("forward.rules[0].deny.networks")


def test_rule_port_range() -> None:
    (err,) = errors_of("forward:\n  rules:\n    - deny: {ports: [22, 70000]}\n")
    assert err.startswith("forward.rules[0].deny.ports[1]: ")


def test_connect_ports_range() -> None:
    (err,) = errors_of("forward: {connect_ports: [443, 0]}\n")
    assert err.startswith("forward.connect_ports[1]: ")


@pytest.mark.parametrize("parent", ["https://p:3128", "p:3128", "http://p:notaport"])
def test_bad_parent(parent: str) -> None:
    (err,) = errors_of(f"forward: {{parent: '{parent}'}}\n")
    assert err.startswith("forward.parent: ")


def test_good_parent() -> None:
    cfg = load_text("forward: {parent: 'http://10.0.0.1:3128/'}\n", "t")
    assert cfg.forward.parent == "http://10.0.0.1:3128/"


def test_full_example_loads() -> None:
    cfg = load_text(
        """
listeners:
  - {name: office, listen: "0.0.0.0:3128", mode: forward}
forward:
  clients: [10.0.0.0/8]
  connect_ports: [443, 8443]
  rules:
    - {name: ads, deny: {domains: [.ads.example], ports: [80, 443]}}
    - {allow: {methods: [GET, CONNECT]}}
timeouts: {client_header: 5s}
limits: {max_header_size: 16KiB}
access_log: {format: json}
""",
        "t",
    )
    assert cfg.listeners[0].name == "office"
    assert cfg.forward.clients == ["10.0.0.0/8"]
    assert cfg.forward.rules[0].deny is not None
    assert cfg.forward.rules[0].deny.domains == [".ads.example"]
    assert cfg.forward.rules[1].allow is not None
    assert cfg.timeouts.client_header == 5.0
    assert cfg.limits.max_header_size == 16384
    assert cfg.access_log.format == "json"


# -- load_file ----------------------------------------------------------------------------


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "ferryman.yaml"
    path.write_text("forward: {connect_ports: [443, 563]}\n", encoding="utf-8")
    assert load_file(str(path)).forward.connect_ports == [443, 563]


def test_load_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("forwrd: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert info.value.source == str(path)
    assert info.value.errors == ["forwrd: unknown setting"]


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert info.value.source == str(path)
    (err,) = info.value.errors
    assert err.startswith("cannot read: ")
    assert "No such file" in err


def test_admin_allowed_hosts() -> None:
    cfg = load_text("admin: {allowed_hosts: [Admin.Example., '[::1]']}", "t")
    assert cfg.admin is not None and cfg.admin.allowed_hosts == ["admin.example", "::1"]
    [err] = errors_of("admin: {allowed_hosts: ['*.example']}")
    assert err.startswith("admin.allowed_hosts: ") and "not a host name" in err
