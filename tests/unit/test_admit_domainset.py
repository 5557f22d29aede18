"""The compact domain set: Squid dstdomain semantics, errors with line numbers, layout."""

from __future__ import annotations

import pickle
import random
import time
from array import array
from pathlib import Path

import pytest

from ferryman.pipeline.admit import domainset
from ferryman.pipeline.admit.domainset import DomainSet, DomainSetError, normalise_entry


def test_exact_entry_matches_only_that_host() -> None:
    ds = DomainSet.build(["example.com"])
    assert ds.matches("example.com")
    assert ds.matches("EXAMPLE.com.")
    assert not ds.matches("www.example.com")
    assert not ds.matches("notexample.com")
    assert not ds.matches("example.com.evil.net")
    assert not ds.matches("com")


def test_star_entry_matches_subdomains_only() -> None:
    ds = DomainSet.build(["*.example.com"])
    assert ds.matches("www.example.com")
    assert ds.matches("a.b.c.example.com")
    assert not ds.matches("example.com")
    assert not ds.matches("badexample.com")
    assert not ds.matches("www.badexample.com")
    assert not ds.matches("example.com.evil.net")


def test_dot_entry_matches_domain_and_subdomains() -> None:
    ds = DomainSet.build([".example.com"])
    assert ds.matches("example.com")
    assert ds.matches("x.y.example.com")
    assert not ds.matches("badexample.com")
    assert not ds.matches("example.co")
    assert not ds.matches("example.org")


def test_mixed_kinds_do_not_leak_into_each_other() -> None:
    ds = DomainSet.build(["a.test", "*.b.test", ".c.test"])
    assert ds.matches("a.test") and not ds.matches("x.a.test")
    assert ds.matches("x.b.test") and not ds.matches("b.test")
    assert ds.matches("c.test") and ds.matches("x.c.test")
    assert not ds.matches("test")
    assert not DomainSet.build([]).matches("a.test")


def test_suffix_match_is_on_label_boundaries() -> None:
    ds = DomainSet.build([".ample.com", "*.le.com"])
    assert not ds.matches("example.com")
    assert not ds.matches("www.example.com")
    assert ds.matches("ample.com")
    assert ds.matches("x.le.com")


def test_tld_wide_entry() -> None:
    ds = DomainSet.build(["*.test"])
    assert ds.matches("anything.test")
    assert ds.matches("a.b.test")
    assert not ds.matches("test")


def test_entries_are_normalised() -> None:
    ds = DomainSet.build(
        ["  Example.COM  ", "WWW.Other.Net.", "", "   ", "# a comment", "*.CDN.org", ".Corp.IO."]
    )
    assert ds.matches("example.com")
    assert ds.matches("www.other.net")
    assert ds.matches("img.cdn.org")
    assert ds.matches("corp.io")
    assert ds.matches("x.corp.io")
    assert not ds.matches("# a comment")
    assert len(ds) == 4  # example.com, www.other.net, *.cdn.org, .corp.io


def test_exact_only_set_with_no_suffixes() -> None:
    ds = DomainSet.build(["a.com"])
    assert not ds.matches("x.a.com")


def test_empty_set_matches_nothing() -> None:
    ds = DomainSet.build([])
    assert len(ds) == 0
    assert not ds.matches("example.com")


def test_large_domain_set_is_correct_and_fast() -> None:
    n = 100_000
    entries = (
        [f"site{i}.com" for i in range(n // 2)]
        + [f".corp{i}.net" for i in range(n // 4)]
        + [f"*.cdn{i}.org" for i in range(n // 4)]
    )
    ds = DomainSet.build(entries)
    assert len(ds) == n

    queries: list[tuple[str, bool]] = []
    for i in range(0, 10_000, 10):
        queries += [
            (f"site{i}.com", True),
            (f"www.site{i}.com", False),
            (f"corp{i}.net", True),
            (f"deep.sub.corp{i}.net", True),
            (f"img.cdn{i}.org", True),
            (f"cdn{i}.org", False),
            (f"xcdn{i}.org", False),
            (f"site{i}.com.evil.example", False),
            (f"unknown{i}.example", False),
            (f"a.b.c.d.e.f.g.unlisted{i}.example", False),
        ]
    assert len(queries) == 10_000

    start = time.perf_counter()
    results = [ds.matches(host) for host, _ in queries]
    elapsed = time.perf_counter() - start

    assert results == [expected for _, expected in queries]
    assert elapsed < 0.5, f"10,000 lookups took {elapsed:.3f}s"



def test_comments_blank_lines_case_trailing_dot_and_idn() -> None:
    text = (
        "# blocklist\n\n  Ads.Example.COM  # inline comment\n.Tracker.NET.\n*.bücher.example\r\n"
        "\t\n# end"
    )
    ds = DomainSet.from_text(text)
    assert len(ds) == 3
    assert list(ds) == ["ads.example.com", ".tracker.net", "*.xn--bcher-kva.example"]
    assert ds.matches("ads.example.com")
    assert ds.matches("tracker.net") and ds.matches("a.tracker.net")
    assert ds.matches("shop.xn--bcher-kva.example")


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ("two words.com", "two words.com"),
        ("exa mple.com", "exa mple.com"),
        ("http://example.com/", "http://example.com/"),
        ("example..com", "example..com"),
        ("-example.com", "-example.com"),
        ("example-.com", "example-.com"),
        ("**.example.com", "**.example.com"),
        ("a*.example.com", "a*.example.com"),
        ("example.com/path", "example.com/path"),
        ("." , "."),
        ("x" * 64 + ".com", "x" * 64 + ".com"),
        ("ex\u00e4mple..com", "ex\u00e4mple..com"),
    ],
)
def test_invalid_line_names_file_and_line(tmp_path: Path, line: str, bad: str) -> None:
    f = tmp_path / "block.txt"
    f.write_text(f"# head\nok.example\n\n{line}  # why\nfine.example\n", encoding="utf-8")
    for build in (
        lambda: DomainSet.from_file(str(f)),
        lambda: DomainSet.from_file(str(f), chunk=5),
        lambda: DomainSet.from_text(f.read_text(), str(f)),
        lambda: DomainSet.build(f.read_text().splitlines(), str(f)),
    ):
        with pytest.raises(DomainSetError) as ei:
            build()
        assert (ei.value.source, ei.value.line) == (str(f), 4)
        assert str(ei.value).startswith(f"{f}:4: not a domain entry")
        assert bad.lower() in str(ei.value).lower() or "xn--" in str(ei.value) or "ä" in str(ei.value)


def test_config_list_errors_count_from_first_line() -> None:
    with pytest.raises(DomainSetError, match=r"^forward.rules\[0\].domains:2: not a domain entry: 'a b'"):
        DomainSet.build(["ok.test", "a b"], "forward.rules[0].domains", first_line=1)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(DomainSetError, match=r"/nope: cannot read: "):
        DomainSet.from_file(str(tmp_path / "nope"))
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"a.test\nb.test\nj\xe9r\xf4me.test\n")
    with pytest.raises(DomainSetError, match=r"latin1.txt:3: not valid UTF-8"):
        DomainSet.from_file(str(f), chunk=4)


def test_file_read_in_small_chunks_equals_whole_text(tmp_path: Path) -> None:
    rnd = random.Random(7)
    lines = [rnd.choice(["", "*.", "."]) + f"h{i}.d{rnd.randrange(50)}.test" for i in range(3000)]
    lines[10] = "# a comment line"
    lines[20] = "with-comment.test # note"
    text = "\n".join(lines)  # no final newline
    f = tmp_path / "d.txt"
    f.write_text(text)
    whole = DomainSet.from_text(text)
    for chunk in (1, 13, 4096, 1 << 20):
        assert list(DomainSet.from_file(str(f), chunk=chunk)) == list(whole)
    assert len(whole) == 2999


class SetDomains:
    """The set-based domain matching ferryman had before the compact set (the reference)."""

    def __init__(self, entries: list[str]) -> None:
        self.exact: set[str] = set()
        self.suffixes: set[str] = set()
        for e in entries:
            if e.startswith("*."):
                self.suffixes.add(e[2:])
            elif e.startswith("."):
                self.suffixes.add(e[1:])
                self.exact.add(e[1:])
            else:
                self.exact.add(e)

    def matches(self, host: str) -> bool:
        if host in self.exact:
            return True
        i = host.find(".")
        while i != -1:
            if host[i + 1 :] in self.suffixes:
                return True
            i = host.find(".", i + 1)
        return False


def test_same_answers_as_the_set_based_acl_domainset() -> None:
    rnd = random.Random(11)
    labels = ["a", "b", "c", "ads", "www", "x1", "example", "test", "com"]

    def name(k: int) -> str:
        return ".".join(rnd.choice(labels) for _ in range(k))

    entries = [rnd.choice(["", "*.", "."]) + name(rnd.randint(1, 3)) for _ in range(400)]
    old = SetDomains(entries)
    new = DomainSet.build(entries)
    for _ in range(5000):
        host = name(rnd.randint(1, 5))
        assert new.matches(host) == old.matches(host), host


def test_a_hash_hit_is_confirmed_against_the_stored_name() -> None:
    """Give 'good.test' the key of 'evil.test': only the name check can then say no."""
    ds = DomainSet.build(["good.test"])
    [key] = ds._keys
    low = key & ((1 << domainset._LOW_BITS) - 1)
    forged = ((hash("evil.test") & domainset._M64) >> domainset._LOW_BITS << domainset._LOW_BITS) | low
    assert ds._shift == 64 and list(ds._index) == [0, 1]  # one bucket: the index needs no change
    ds._keys = array("Q", [forged])
    ds._filter = bytearray(b"\xff" * len(ds._filter))  # let every name through the filter
    assert ds._probe("evil.test", domainset._EXACT) is False
    assert not ds.matches("evil.test")
    ds._keys = array("Q", [key])
    assert ds.matches("good.test")


def test_the_filter_stops_most_absent_names_before_any_bisect() -> None:
    ds = DomainSet.build([f"host{i}.test" for i in range(10_000)])
    assert len(ds._filter) * 8 >= 16 * 10_000
    stopped = 0
    for i in range(2000):
        b = (hash(f"absent{i}.test") & domainset._M64) >> ds._fshift
        stopped += not ds._filter[b >> 3] & (1 << (b & 7))
    assert stopped > 1700  # about 1 - e^(-1/16) pass: ~94% stop


def test_many_entries_with_duplicates_and_a_compact_layout() -> None:
    names = [f"host{i}.zone{i % 100}.test" for i in range(20_000)]
    ds = DomainSet.build(names + names[:100] + [f".dom{i}.test" for i in range(1000)])
    assert len(ds) == 21_100
    assert all(ds.matches(n) for n in names[::97])
    assert ds.matches("a.b.dom999.test")
    assert not ds.matches("host20000.zone0.test")
    # keys 8 bytes each + names compressed: well under the ~100 bytes/entry of a str set
    assert ds.memory_bytes() < 21_100 * 20


def test_refuses_to_be_pickled() -> None:
    with pytest.raises(TypeError, match="rebuild it"):
        pickle.dumps(DomainSet.build(["a.test"]))


def test_normalise_entry() -> None:
    assert normalise_entry("  # only a comment") is None
    assert normalise_entry("") is None
    assert normalise_entry("WWW.Example.com.  # x") == "www.example.com."
    assert normalise_entry("_dmarc.example.com") == "_dmarc.example.com"
    with pytest.raises(ValueError):
        normalise_entry("a b")
