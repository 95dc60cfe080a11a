"""Perceptual hashes (dHash, pHash) and near-duplicate search, NumPy only."""
from __future__ import annotations

from typing import Iterable

import numpy as np

#: Near-duplicate rule used by the audit and the splits: both distances at or under these.
PHASH_THRESHOLD = 8
DHASH_THRESHOLD = 12


def _gray(img: "Image.Image", size: tuple[int, int]) -> np.ndarray:  # noqa: F821
    from PIL import Image

    return np.asarray(img.convert("L").resize(size, Image.BILINEAR), dtype=np.float32)


def _pack(bits: np.ndarray) -> int:
    out = 0
    for b in bits.ravel():
        out = (out << 1) | int(bool(b))
    return out


def dhash(img: "Image.Image", size: int = 8) -> int:  # noqa: F821
    """Difference hash: ``size*size`` bits, each "is this pixel brighter than its right neighbour"."""
    g = _gray(img, (size + 1, size))
    return _pack(g[:, 1:] > g[:, :-1])


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)


def phash(img: "Image.Image") -> int:  # noqa: F821
    """DCT hash: 64 bits, low-frequency 8x8 DCT coefficients (DC excluded from the median) vs their median."""
    g = _gray(img, (32, 32))
    coeffs = (_DCT32 @ g @ _DCT32.T)[:8, :8].ravel()
    return _pack(coeffs > np.median(coeffs[1:]))


def hamming_pairs(hashes: Iterable[int], threshold: int, chunk: int = 2048) -> list[tuple[int, int, int]]:
    """All pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance <= ``threshold`` (64-bit hashes)."""
    h = np.asarray(list(hashes), dtype=np.uint64)
    out: list[tuple[int, int, int]] = []
    n = len(h)
    for start in range(0, n, chunk):
        block = h[start:start + chunk]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        ii, jj = np.nonzero(dist <= threshold)
        for i, j in zip(ii.tolist(), jj.tolist()):
            gi = start + i
            if gi < j:
                out.append((gi, j, int(dist[i, j])))
    out.sort()
    return out


def hamming_cross_pairs(hashes: Iterable[int], others: Iterable[int], threshold: int,
                        chunk: int = 2048) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, distance)``, ``i != j``, with Hamming distance between ``hashes[i]`` and ``others[j]`` (the
    hash of image j mirrored) <= ``threshold``, each unordered pair once as ``(min, max)`` at its smaller distance."""
    h = np.asarray(list(hashes), dtype=np.uint64)
    m = np.asarray(list(others), dtype=np.uint64)
    best: dict[tuple[int, int], int] = {}
    for start in range(0, len(h), chunk):
        dist = np.bitwise_count(h[start:start + chunk, None] ^ m[None, :])
        ii, jj = np.nonzero(dist <= threshold)
        for i, j in zip(ii.tolist(), jj.tolist()):
            gi = start + i
            if gi != j:
                key = (min(gi, j), max(gi, j))
                d = int(dist[i, j])
                if d < best.get(key, 65):
                    best[key] = d
    return sorted((a, b, d) for (a, b), d in best.items())


class UnionFind:
    """Disjoint sets over ``0..n-1``."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return sorted(out.values())
