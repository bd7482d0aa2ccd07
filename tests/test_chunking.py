"""The one chunking helper of the batched loops (xrbench.chunking): known slices, the row
counts of a budget, and map_chunks equal to the unchunked call."""

from __future__ import annotations

import pytest
import torch

from xrbench.chunking import (RELEX_PIXELS, chunk_pixels, chunk_rows, chunk_slices,
                              map_chunks, rows_per_chunk)


def test_chunk_slices_known_answer() -> None:
    assert chunk_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert chunk_slices(8, 4) == [slice(0, 4), slice(4, 8)]
    assert chunk_slices(3, 10) == [slice(0, 3)]
    assert chunk_slices(0, 4) == []
    x = torch.arange(10)
    assert [x[s].tolist() for s in chunk_slices(10, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("rows", [0, -1])
def test_chunk_slices_rejects_empty_chunks(rows: int) -> None:
    with pytest.raises(ValueError, match="rows per chunk"):
        chunk_slices(10, rows)
    with pytest.raises(ValueError):
        map_chunks(lambda t: t, torch.zeros(3), rows=rows)


def test_row_counts_of_a_budget() -> None:
    assert chunk_rows(1024, 20) == 51 and chunk_rows(7, 20) == 1 and chunk_rows(5) == 5
    x = torch.zeros(3, 1, 8, 8)
    assert rows_per_chunk(x, 2 ** 17) == 2 ** 11
    assert rows_per_chunk(x, 10) == 1  # never an empty chunk
    # expand: the same as the old "max(1, rows // expand)" for every budget
    for pixels in (1, 63, 64, 640, 2 ** 15, 12345):
        assert rows_per_chunk(x, pixels, expand=8) == max(1, max(1, pixels // 64) // 8)
    assert rows_per_chunk(x[:0], 640) == 10  # an empty batch has a row size too
    assert chunk_pixels(RELEX_PIXELS, "cpu") == 2 ** 15
    assert chunk_pixels(RELEX_PIXELS, torch.device("cpu")) == 2 ** 15
    assert chunk_pixels(RELEX_PIXELS, "cuda:1") == chunk_pixels(RELEX_PIXELS, "mps") == 2 ** 22


def test_map_chunks_equals_the_unchunked_result() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 3, generator=g), torch.randn(10, 3, generator=g)
    seen: list[int] = []

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return (x * y).sum(dim=1)

    for rows in (1, 3, 4, 10, 11):
        seen.clear()
        assert torch.equal(map_chunks(fn, a, b, rows=rows), (a * b).sum(dim=1))
        assert seen == [len(range(10)[s]) for s in chunk_slices(10, rows)]
    empty = map_chunks(lambda x: x.argmax(dim=1), a[:0], rows=4)  # one call on the empty rows
    assert empty.shape == (0,) and empty.dtype == torch.int64
    with pytest.raises(ValueError, match="different lengths"):
        map_chunks(fn, a, b[:5], rows=4)
