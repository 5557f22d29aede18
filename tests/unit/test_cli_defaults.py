"""What the command line turns into: a shared cache by default in forward mode (the built-in
config of `make run` and `ferryman forward` with no flags), `--no-cache` and the sizes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ferryman.cli import DEFAULT_FORWARD_CACHE, build_parser, builtin_config
from ferryman.config.compile import compile_config
from ferryman.config.load import normalise
from ferryman.config.schema import Config
from ferryman.pipeline.plan import Plan
from ferryman.server.lifecycle import cache_summary

MIB = 1 << 20


def compiled(data: dict[str, Any]) -> Plan:
    return compile_config(normalise(Config.model_validate(data)), "<test>")


def forward_data(*argv: str) -> dict[str, Any]:
    from ferryman.cli import _forward_source

    source = _forward_source(build_parser().parse_args(["forward", *argv]))
    assert source.inline is not None
    return source.inline


def test_built_in_default_has_a_modest_memory_cache_for_forward_traffic() -> None:
    plan = compiled(builtin_config())
    assert plan.cache is not None
    assert (plan.cache.store, plan.cache.max_size, plan.cache.forward) == ("memory", 64 * MIB, True)
    assert plan.forward.cache_rules is not None  # forward requests use it
    assert plan.admin == ("127.0.0.1", 9900)
    assert cache_summary(plan, "forward") == "memory 64MiB"


def test_forward_one_liner_caches_by_default() -> None:
    data = forward_data()
    assert data["cache"] == DEFAULT_FORWARD_CACHE == {"store": "memory", "max_size": 64 * MIB}
    assert compiled(data).forward.cache_rules is not None


def test_no_cache_turns_the_default_off() -> None:
    data = forward_data("--no-cache")
    assert "cache" not in data
    plan = compiled(data)
    assert plan.cache is None and plan.forward.cache_rules is None
    assert cache_summary(plan, "forward") == "off"


@pytest.mark.parametrize(
    ("argv", "cache"),
    [(("--cache",), {"store": "memory"}),
     (("--cache-size", "1GiB"), {"store": "memory", "max_size": "1GiB"}),
     (("--cache-dir", "/tmp/c", "--cache-size", "2GiB"),
      {"store": "disk", "path": "/tmp/c", "max_size": "2GiB"})],
)  # fmt: skip
def test_explicit_cache_flags(argv: tuple[str, ...], cache: dict[str, Any]) -> None:
    assert forward_data(*argv)["cache"] == cache


@pytest.mark.parametrize("other", [["--cache"], ["--cache-dir", "/tmp/c"]])
def test_no_cache_conflicts_with_asking_for_one(other: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["forward", "--no-cache", *other])


def test_an_empty_config_file_still_means_no_cache() -> None:
    # only the built-in default and the one-liner choose a cache: a file says what it wants
    assert compiled({}).cache is None


def test_cache_summary_of_each_store_and_mode() -> None:
    assert cache_summary(compiled({}), "reverse") == "off"
    with_disk = compiled({"cache": {"store": "disk", "path": "/var/c", "max_size": "10GiB"}})
    assert cache_summary(with_disk, "forward") == "disk /var/c 10GiB"
    assert cache_summary(with_disk, "reverse") == "disk /var/c 10GiB (routes with cache.enabled)"
    assert with_disk.cache is not None
    no_fwd = replace(with_disk, cache=replace(with_disk.cache, forward=False))
    assert cache_summary(no_fwd, "forward") == "off"
    assert cache_summary(compiled({"cache": {"max_size": 1000}}), "forward") == "memory 1000B"
