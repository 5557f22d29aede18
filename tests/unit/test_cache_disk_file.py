"""The disk cache's entry format: block sums, the head's size check, the tail's seal (pure parts)."""

from __future__ import annotations

import os

import pytest
import xxhash

from ferryman.pipeline.cache import disk_file as f


@pytest.mark.parametrize("size", [0, 1, f.BLOCK - 1, f.BLOCK, f.BLOCK + 1, 3 * f.BLOCK + 17])
@pytest.mark.parametrize("piece", [1000, f.BLOCK, 100_000])
def test_block_sums_do_not_depend_on_how_the_body_was_written(size: int, piece: int) -> None:
    body = os.urandom(size)
    sums = f.BlockSums()
    for i in range(0, size, piece):
        sums.update(body[i : i + piece])
    table = sums.finish()
    assert len(table) == 8 * f.blocks(size)
    expected = b"".join(
        f.SUM.pack(xxhash.xxh3_64_intdigest(body[p : p + f.BLOCK], seed=n))
        for n, p in enumerate(range(0, size, f.BLOCK))
    )
    assert table == expected and f.first_bad_block(body, table, 0) is None


def test_the_first_bad_block_is_found_and_a_swap_is_caught() -> None:
    body = bytearray(os.urandom(5 * f.BLOCK))
    table = f.BlockSums()
    table.update(bytes(body))
    sums = table.finish()
    assert f.first_bad_block(body[2 * f.BLOCK :], sums, 2) is None  # a run starting at block 2
    body[3 * f.BLOCK + 9] ^= 1
    assert f.first_bad_block(body, sums, 0) == 3
    a, b = os.urandom(f.BLOCK), os.urandom(f.BLOCK)
    twin = f.BlockSums()
    twin.update(a + a + b)
    table = twin.finish()
    assert table[:8] != table[8:16]  # sums are seeded with the block's index
    assert f.first_bad_block(a + b, table, 1) is None
    assert f.first_bad_block(b + a, table, 1) == 0  # blocks swapped in place are caught


def test_the_head_must_agree_with_the_file_size_and_format() -> None:
    head = f.HEAD.pack(f.MAGIC, f.VERSION, f.BLOCK_SHIFT, 10, 100_000)
    size = f.file_size(10, 100_000)
    assert size == 24 + 10 + 100_000 + 8 * 2 + 20
    assert f.parse_head(head, size) == (10, 100_000)
    for bad_size in (size - 1, size + 1):
        with pytest.raises(f.Corrupt):
            f.parse_head(head, bad_size)
    older = f.HEAD.pack(f.MAGIC, 2, f.BLOCK_SHIFT, 10, 100_000)
    for other in (older, f.HEAD.pack(f.MAGIC, 3, 12, 10, 100_000)):
        with pytest.raises(f.Corrupt):
            f.parse_head(other, size)  # an older format, or other blocks: a miss, never an error


def test_the_tail_seals_head_meta_and_sums() -> None:
    head, meta, sums = b"h" * 24, b'{"k":"x"}', b"s" * 16
    tail = f.TAIL.pack(f.seal_hash(head, meta, sums), 7, f.END)
    f.check_tail(head, meta, sums, tail, 7)
    damaged = ((b"H" + head[1:], meta, sums), (head, meta[:-1] + b"]", sums), (head, meta, b"t" + sums[1:]))
    for args in damaged:
        with pytest.raises(f.Corrupt):
            f.check_tail(*args, tail, 7)
    with pytest.raises(f.Corrupt):
        f.check_tail(head, meta, sums, tail, 8)
