"""Top-k sparsification with error feedback: ``compression="topk"`` under ``allreduce``.

Each rank sends only the ``k = ceil(density * n)`` entries of largest magnitude of its
gradient plus its *residual* (what it has not sent yet), and keeps the rest as the new
residual, so that no part of a gradient is dropped, only delayed (error feedback:
Stich, Cordonnier and Jaggi 2018, "Sparsified SGD with memory"; Lin et al. 2018, "Deep
Gradient Compression"). The ranks gather each other's (index, value) pairs and sum
them into a dense gradient, the same on every rank.

What travels: ``size * 2k`` 32-bit words, gathered through the ring's sum
(:func:`~tfyarn.exchange.collectives.allgather_rows`). At ``density=0.01`` between 2
ranks that is 0.04 of float32's bytes.

The residuals live in the role process, one per exchanged buffer (a bucket's, per
dtype); a restart from a checkpoint starts them from zero.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np

from tfyarn.errors import ConfigError
from tfyarn.exchange.collectives import Collectives, allgather_rows

__all__ = ["DEFAULT_DENSITY", "TopK", "densify", "select"]

#: The share of a buffer's entries each rank sends unless told otherwise.
DEFAULT_DENSITY = 0.01


#: Entries sampled (evenly spaced) to guess the k-th largest magnitude of a buffer.
_SAMPLE = 1 << 16


def select(
    acc: np.ndarray, k: int, magnitude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` entries of largest magnitude of the flat ``acc``: (indices, values).

    Indices come sorted. A full partial sort of a 25M-entry buffer takes a quarter of a
    second on one core, so the search is narrowed first (Deep Gradient Compression's
    sampling): the magnitude above which an evenly spaced sample has twice its share of
    ``k`` keeps the candidates, and only those are partially sorted. Whenever they hold
    at least ``k`` entries they hold the top ``k``; otherwise (a sample that lied, such as
    a buffer mostly zero) every entry is a candidate. The result is a pure function of
    ``acc``. ``magnitude``: a float32 scratch buffer of ``acc``'s size to reuse (fresh
    pages of a large buffer cost more than the search).
    """
    n = acc.size
    if k >= n:
        return np.arange(n, dtype=np.int64), acc.copy()
    magnitude = np.abs(acc, out=magnitude)
    sample = magnitude[:: max(1, n // _SAMPLE)]
    share = min(sample.size, max(1, math.ceil(2 * k * sample.size / n)))
    threshold = np.partition(sample, sample.size - share)[sample.size - share]
    candidates = np.flatnonzero(magnitude >= threshold)
    if candidates.size < k:
        candidates = np.arange(n)
    top = np.argpartition(magnitude[candidates], candidates.size - k)[candidates.size - k :]
    indices = np.sort(candidates[top])
    return indices, acc[indices]


def densify(
    out: np.ndarray, indices: list[np.ndarray], values: list[np.ndarray], average: bool
) -> np.ndarray:
    """Every rank's (indices, values) summed into the float32 ``out`` (overwritten).

    Added rank by rank in rank order, so every rank that densifies the same pairs gets
    the same bits. A rank's indices are distinct (as :func:`select` gives them).
    """
    out.fill(0)
    for idx, val in zip(indices, values, strict=True):
        out[idx] += val
    if average and indices:
        out /= np.float32(len(indices))
    return out


class TopK:
    """One rank's top-k exchange, with its residuals (one per exchanged buffer).

    Parameters
    ----------
    density : float
        The share of a buffer's entries each rank sends, ``0 < density <= 1``.
    """

    def __init__(self, density: float) -> None:
        if isinstance(density, bool) or not isinstance(density, int | float):
            raise ConfigError(f"topk density must be a number, got {density!r}")
        if not 0 < density <= 1:
            raise ConfigError(f"topk density must be in (0, 1], got {density}")
        self.density = float(density)
        self.residuals: dict[Hashable, np.ndarray] = {}
        self._magnitudes: dict[Hashable, np.ndarray] = {}  # select's scratch, per buffer

    def k(self, n: int) -> int:
        """How many of ``n`` entries a rank sends."""
        return min(n, max(1, math.ceil(self.density * n)))

    def allreduce_(
        self, coll: Collectives, flat: np.ndarray, key: Hashable, average: bool
    ) -> np.ndarray:
        """Replace the float32 ``flat`` by the sum (or mean) of every rank's top-k.

        ``key`` names the buffer across steps (its residual); every rank must call with
        buffers of the same size in the same order.
        """
        if flat.dtype != np.float32:
            raise ConfigError(f"topk compresses float32 buffers, not {flat.dtype}")
        n, k = flat.size, self.k(flat.size)
        residual = self.residuals.get(key)
        if residual is None or residual.size != n:
            residual = self.residuals[key] = np.zeros(n, np.float32)
            self._magnitudes[key] = np.empty(n, np.float32)
        residual += flat  # what this rank has to send now
        indices, values = select(residual, k, self._magnitudes[key])
        residual[indices] = 0.0  # what is sent leaves the residual; the rest waits
        mine = np.concatenate([indices.astype(np.uint32), values.view(np.uint32)])
        pairs = allgather_rows(coll, mine)  # every rank's k indices, then k values' bits
        densify(flat, list(pairs[:, :k]), list(pairs[:, k:].view(np.float32)), average)
        return flat
