"""Chunked loops over the rows of a batch, and the chunk sizes, in one place.

Every batched loop of the metrics and attacks cuts its rows with :func:`chunk_slices` (a loop
that writes into a preallocated result, or has side effects) or :func:`map_chunks` (a loop
that concatenates one tensor per chunk); the number of rows per chunk comes from
:func:`chunk_rows` / :func:`rows_per_chunk`.

Chunk sizes are memory and speed only, but the float rounding of a batched convolution can
depend on its batch size, so a metric's chunks are part of what makes its numbers
reproducible: the sizes below, and the row counts they give, must not change silently.

Two kinds of budget:

- a **row budget** (the keywords ``batch_size``, ``attack_batch``, ``pair_batch``): rows per
  chunk, divided by the number of rows one item expands into (insertion's ratios, RPS's
  draws x eps): :func:`chunk_rows`;
- a **pixel budget** (the keyword ``max_batch_pixels``): input values (rows x C x H x W) per
  chunk, by device type, a :data:`ChunkPixels` table: :func:`chunk_pixels` reads the
  device's entry, :func:`rows_per_chunk` turns it into rows of a batch.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:  # torch is imported where it is used: importing xrbench needs no torch
    import torch

#: A pixel budget: device type (``"cpu"``, ``"cuda"``, ...) -> input values
#: (rows x C x H x W) per chunk. A device type the table does not name gets the ``"cuda"``
#: entry (an accelerator wants large chunks).
ChunkPixels = Mapping[str, int]

#: Forward passes without gradients: retrieval's predictions (``predict``) of clean, masked
#: and adversarial images.
FORWARD_PIXELS: ChunkPixels = {"cpu": 2 ** 22, "cuda": 2 ** 22}
#: RelEx's optimisation, forward and input gradient of 2 x samples rows per image (whole
#: images per chunk): on a CPU, small chunks that stay in cache are fastest (about 500 rows of
#: 8 x 8 digits); a GPU wants large ones. No chunking changes a mask (keyed noise).
RELEX_PIXELS: ChunkPixels = {"cpu": 2 ** 15, "cuda": 2 ** 22}
#: The loss landscape's explainer calls (explainers such as IG expand the batch 30x); its
#: forward-only calls (cross-entropy, predictions) take :data:`LANDSCAPE_FORWARD_FACTOR`
#: times as many.
LANDSCAPE_PIXELS: ChunkPixels = {"cpu": 2 ** 17, "cuda": 2 ** 17}
#: The landscape's forward-only calls take this many times its explainer budget.
LANDSCAPE_FORWARD_FACTOR = 16
#: Rows one explainer call may make of each input row (integrated gradients' steps,
#: SmoothGrad's copies): retrieval explains in chunks of its pixel budget over this.
EXPLAINER_EXPANSION = 64


def chunk_pixels(budget: ChunkPixels, device: torch.device | str) -> int:
    """The entry of ``budget`` for ``device``'s type (the ``"cuda"`` entry for a type the
    table does not name)."""
    kind = device if isinstance(device, str) else device.type
    kind = kind.split(":", 1)[0]
    return int(budget.get(kind, budget["cuda"]))


def chunk_rows(budget: int, row_cost: int = 1) -> int:
    """Rows per chunk: ``max(1, budget // row_cost)``, the rows that fit in ``budget`` when
    each costs ``row_cost`` (a row budget over the rows one item expands into, or a pixel
    budget over a row's values times its expansion). At least 1: a chunk is never empty."""
    return max(1, int(budget) // max(1, int(row_cost)))


def rows_per_chunk(x: torch.Tensor, pixels: int, expand: int = 1) -> int:
    """How many rows of x (N, ...) fit in one chunk of ``pixels`` input values when each row
    becomes ``expand`` rows (>= 1): ``max(1, pixels // (row values * expand))``, the same as
    ``max(1, pixels // row values) // expand`` floored at 1."""
    return chunk_rows(pixels, max(1, x.shape[1:].numel()) * max(1, int(expand)))


def chunk_slices(n: int, rows: int) -> list[slice]:
    """The chunks of ``n`` rows, ``rows`` at a time, in order: ``slice(0, rows)``,
    ``slice(rows, 2 * rows)``, ..., the last one ending at ``n`` (shorter when ``rows`` does
    not divide ``n``). ``n = 0`` gives no slices; ``rows < 1`` or ``n < 0`` is a ValueError.

    >>> chunk_slices(10, 4)
    [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
    """
    n, rows = operator.index(n), operator.index(rows)
    if rows < 1:
        raise ValueError(f"chunk_slices: rows per chunk must be >= 1, got {rows}")
    if n < 0:
        raise ValueError(f"chunk_slices: the number of rows must be >= 0, got {n}")
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


def map_chunks(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, rows: int
               ) -> torch.Tensor:
    """``fn`` over the chunks of ``rows`` rows of ``tensors`` (all of one length N), results
    concatenated along dim 0: ``cat([fn(a[s], b[s], ...) for s in chunk_slices(N, rows)])``.

    ``fn`` must map its chunk's rows to result rows one for one, so the result equals
    ``fn(*tensors)`` up to the float rounding of the batch size. With N = 0 ``fn`` is called
    once on the empty tensors (so the result has its trailing shape and dtype).
    """
    import torch

    if not tensors:
        raise ValueError("map_chunks needs at least one tensor to chunk")
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"map_chunks: tensors of different lengths {[len(t) for t in tensors]}")
    slices = chunk_slices(n, rows)
    if not slices:
        return fn(*tensors)
    return torch.cat([fn(*(t[s] for t in tensors)) for s in slices])
