"""htpasswd and group files: parsing, errors with file and line, verification."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest

from ferryman.pipeline.admit.htpasswd import (
    AuthFileError,
    PasswordEntry,
    UserDb,
    parse_groups,
    parse_htpasswd,
    read_text,
    verify_password,
)

# Vectors made by other implementations: `openssl passwd -apr1 -salt abcdefgh 'pässword'`,
# `printf 'pässword' | openssl sha1 -binary | base64`, and bcrypt with Apache's $2y$ prefix.
APR1 = "$apr1$abcdefgh$rRdIxwY5XRHT4TMtBPZn.0"
SHA1 = "{SHA}I7dElEdfX4dJgLdnbVEeI9iG2mQ="
BCRYPT_2Y = "$2y$04$tm98LKIQId2yaE5gxya2xeMZ/N7u6t.3EO2JaZ1hFaWXLvEsiVlMe"  # "secret"
PW = "pässword".encode()


def bcrypt_hash(pw: bytes) -> str:
    return bcrypt.hashpw(pw, bcrypt.gensalt(4)).decode()


def test_parses_every_accepted_scheme_and_flags_weak_ones() -> None:
    text = f"# users\n\nalice:{BCRYPT_2Y}\n  bob:{APR1}\ncarol:{SHA1}  \ndave:{bcrypt_hash(b'x')}\n"
    users = parse_htpasswd(text, "users.htpasswd")
    assert {u: e.scheme for u, e in users.items()} == {
        "alice": "bcrypt", "bob": "apr1", "carol": "sha1", "dave": "bcrypt",
    }
    assert users["bob"].line == 4
    db = UserDb.build(users)
    assert sorted(e.user for e in db.weak_entries()) == ["bob", "carol"]
    assert not users["alice"].weak


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("alice", "expected user:hash"),
        (":" + BCRYPT_2Y, "empty user name"),
        ("alice:", "no password hash"),
        ("alice:secret", "plain text"),
        ("alice:$1$abc$def", "crypt"),
        ("alice:$6$salt$hash", "crypt"),
        ("alice:rl4QkYqWnYhjQ", "crypt"),  # DES crypt
        ("alice:$2y$04$short", "malformed"),
        ("alice:$apr1$abcdefgh$tooshort", "malformed"),
        ("alice:{SHA}notbase64!!!!!!!!!!!!!!!!!!!!", "malformed"),
        ("alice:{SHA}" + "QUJD", "malformed"),  # valid base64, wrong length
        ("al ice:" + BCRYPT_2Y, "white space"),
        ("a\tb:" + BCRYPT_2Y, "white space"),
    ],
)
def test_bad_line_is_an_error_naming_file_and_line(line: str, fragment: str) -> None:
    text = f"ok:{BCRYPT_2Y}\n# comment\n{line}\n"
    with pytest.raises(AuthFileError) as ei:
        parse_htpasswd(text, "/etc/ferryman/users")
    assert ei.value.path == "/etc/ferryman/users"
    assert ei.value.line == 3
    assert str(ei.value).startswith("/etc/ferryman/users:3: ")
    assert fragment in str(ei.value)


def test_duplicate_user_is_an_error() -> None:
    with pytest.raises(AuthFileError, match=r"f:2: user 'a' already defined on line 1"):
        parse_htpasswd(f"a:{BCRYPT_2Y}\na:{APR1}\n", "f")


def test_verify_each_scheme_right_and_wrong() -> None:
    cases = [
        (PasswordEntry("a", BCRYPT_2Y, "bcrypt"), b"secret"),
        (PasswordEntry("b", BCRYPT_2Y.replace("$2y$", "$2b$"), "bcrypt"), b"secret"),
        (PasswordEntry("c", APR1, "apr1"), PW),
        (PasswordEntry("d", SHA1, "sha1"), PW),
    ]
    for entry, pw in cases:
        assert verify_password(entry, pw), entry
        assert not verify_password(entry, pw + b"x"), entry
        assert not verify_password(entry, b""), entry
        assert not verify_password(entry, b"a\x00b"), entry


def test_bcrypt_uses_the_first_72_bytes_like_htpasswd() -> None:
    long_pw = b"p" * 72
    entry = PasswordEntry("a", bcrypt_hash(long_pw), "bcrypt")
    assert verify_password(entry, long_pw + b"anything after byte 72")
    assert not verify_password(entry, b"p" * 71)


def test_verify_never_raises_on_a_corrupt_hash() -> None:
    assert not verify_password(PasswordEntry("a", "$2y$04$" + "!" * 53, "bcrypt"), b"x")
    assert not verify_password(PasswordEntry("a", "$apr1$x", "apr1"), b"x")


def test_group_file_format_and_errors() -> None:
    groups = parse_groups("# g\nstaff: alice bob\nadmins:carol\nstaff: dave\nempty:\n", "groups")
    assert groups == {
        "staff": frozenset({"alice", "bob", "dave"}),
        "admins": frozenset({"carol"}),
        "empty": frozenset(),
    }
    with pytest.raises(AuthFileError, match=r"^groups:2: expected group: user user"):
        parse_groups("staff: a\nnot a group line\n", "groups")
    with pytest.raises(AuthFileError, match=r"^groups:1: invalid group name"):
        parse_groups(": a b\n", "groups")
    with pytest.raises(AuthFileError, match=r"^groups:1: invalid user name 'a:b'"):
        parse_groups("g: a:b\n", "groups")


def test_user_db_from_files_merges_group_file_and_config(tmp_path: Path) -> None:
    ht = tmp_path / "users"
    ht.write_text(f"alice:{BCRYPT_2Y}\nbob:{APR1}\n")
    gf = tmp_path / "groups"
    gf.write_text("staff: alice\nops: bob ghost\n")
    db = UserDb.from_files(str(ht), str(gf), {"staff": ["bob"], "lab": ("alice",)})
    assert db.groups_of("alice") == {"staff", "lab"}
    assert db.groups_of("bob") == {"staff", "ops"}
    assert db.groups_of("nobody") == frozenset()
    assert db.unknown_group_members() == (("ops", "ghost"),)
    assert db.get("alice") is not None and db.get("zed") is None


def test_unreadable_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match=r"/missing: cannot read: "):
        read_text(str(tmp_path / "missing"))
    bad = tmp_path / "latin1"
    bad.write_bytes(b"a:" + BCRYPT_2Y.encode() + b"\nj\xe9r\xf4me:x\n")
    with pytest.raises(AuthFileError, match=r"latin1:2: not valid UTF-8"):
        read_text(str(bad))
