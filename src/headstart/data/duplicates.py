"""Copies of one image among a dataset's files: exact copies, near copies and the groups they form.

Exact copies
    Files whose bytes have the same BLAKE2b digest (:mod:`headstart.data.fingerprints`).
Near copies
    Two images are near copies when their 64-bit perceptual hashes (``imagehash.phash``) differ in
    at most :data:`NEAR_DISTANCE` bits *and* their 8 × 8 grey thumbnails correlate at
    :data:`NEAR_CORRELATION` or more (Pearson, over the 64 values). The hash finds the candidates:
    every pair within the distance, by a blocked search (XOR of the hashes and a popcount over
    :data:`ROW_BLOCK` × :data:`COLUMN_BLOCK` pairs at a time: 36 MB whatever the number of images;
    50,000 hashes are searched in 5-7 s on a 2-core machine, time growing with the square of the
    count). The thumbnail confirms them. Images whose thumbnail is flat (standard deviation under
    :data:`FLAT_STD` grey levels: blank frames) carry no picture to compare and are matched as exact
    copies only.
Groups
    Exact and near pairs are joined into groups (connected components, i.e. a union-find over the
    pairs): a group holds every image linked to another by a chain of copies. A group's id is the
    position of its first image, so an image without copies is its own group.

Why these defaults: measured by ``bench/bench_duplicates.py``, every file read by the check's own
code. Planted copies, one per image: resized to 50%, re-encoded as JPEG at quality 70, both, cropped
by 2% on every side, 10% brighter. Recall is the share of copies found in their original's group; a
false copy is a distinct image grouped with another distinct image (20 scikit-image photos, the 345
tiles of 128 px cut from them, the 5,000 MNIST-5k digits).

| rule | images | resized 50% | JPEG q70 | both | crop 2% | +10% bright | false copies | largest false group |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| identical pHash (cleanvision) | photos | 80% | 65% | 55% | 0% | 65% | 0% | 1 |
| | tiles | 72% | 60% | 40% | 4% | 63% | 1.4% | 5 |
| | digits | 52% | 58% | 26% | 0% | 81% | 0.9% | 4 |
| pHash ≤ 10 bits alone | photos | 100% | 100% | 100% | 95% | 100% | 0% | 1 |
| | tiles | 99.7% | 97.4% | 96.8% | 94% | 99.4% | 1.4% | 5 |
| | digits | 100% | 100% | 100% | 100% | 100% | 96% | 4,745 |
| ≤ 10 bits and thumbnail ≥ 0.99 (default) | photos | 100% | 95% | 95% | 45% | 95% | 0% | 1 |
| | tiles | 94% | 91% | 86% | 31% | 94% | 0.9% | 3 |
| | digits | 96% | 100% | 96% | 0% | 100% | 4.2% | 26 |

cleanvision groups only images whose pHash is identical: it misses a third of re-encodes. A
distance of 10 bits (imagededup's default for pHash too) finds resizes and re-encodes of photos,
but cannot tell MNIST digits apart: small centred strokes on black share their low frequencies, so
32% of the distinct digits have another within 4 bits and 96% within 10, chained into one group of
4,745. The thumbnail check keeps them apart (4.2% of digits get a false copy, every one of the same
class: no false pair under two labels; the largest false group holds 26) and costs a few percent
of the photos' copies and most crops, which move the thumbnail. A correlation of 0.98 finds more
crops (65% of photos) and more false digits (11%, in a group of 343); 0.995 fewer of both (0.7% of
digits, but 84% of their resizes). scikit-image's ``cat`` and ``chelsea`` samples were found to be
one photo, and are left out of the table.
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components

NEAR_DISTANCE = 10
"""Largest Hamming distance (bits of 64) between the perceptual hashes of two near copies."""
NEAR_CORRELATION = 0.99
"""Smallest correlation between the 8 × 8 thumbnails of two near copies."""
FLAT_STD = 1.0
"""Thumbnails with a standard deviation below this (grey levels) are blank: exact copies only."""
ROW_BLOCK = 512
COLUMN_BLOCK = 8192
"""The near-copy search compares ROW_BLOCK × COLUMN_BLOCK hashes at a time (32 MB of XOR, 4 MB of counts)."""

_BYTE_COUNTS = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def _popcount(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 of ``values`` into ``out`` (uint8 of the same shape)."""
    if hasattr(np, "bitwise_count"):  # numpy 2
        return np.bitwise_count(values, out=out)
    out[...] = _BYTE_COUNTS[values.view(np.uint8)].reshape(*values.shape, 8).sum(axis=-1)
    return out


def exact_pairs(digests: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` of usable rows with the same digest (``digests``: ``[n, k]`` uint8), each copy
    linked to the next one of its digest (enough for the groups)."""
    rows = np.flatnonzero(usable)
    if rows.size < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    keys = np.ascontiguousarray(digests[rows]).view(np.dtype((np.void, digests.shape[1]))).reshape(-1)
    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    return rows[order[:-1][same]], rows[order[1:][same]]


def _correlations(thumbs: np.ndarray, first: np.ndarray, second: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Correlation of the thumbnails of each pair ``(first[k], second[k])``, a chunk of pairs at a time
    (a block of dense hashes, such as digits, can hold tens of thousands of candidate pairs)."""
    found = np.empty(first.size, dtype=np.float32)
    for start in range(0, first.size, chunk):
        left = unit_thumbnails(thumbs[first[start : start + chunk]])[0]
        right = unit_thumbnails(thumbs[second[start : start + chunk]])[0]
        found[start : start + chunk] = np.einsum("ij,ij->i", left, right)
    return found


def flat_thumbnails(thumbs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Whether each thumbnail is flat (:data:`FLAT_STD`), computed a chunk at a time (1 byte per image)."""
    flat = np.zeros(len(thumbs), dtype=bool)
    for start in range(0, len(thumbs), chunk):
        flat[start : start + chunk] = unit_thumbnails(thumbs[start : start + chunk])[1]
    return flat


def unit_thumbnails(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails centred and scaled to unit length (float32 ``[n, 64]``: their dot product is the
    correlation) and whether each is flat (:data:`FLAT_STD`)."""
    values = thumbs.astype(np.float32)
    values -= values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(values, axis=1)
    flat = norms / np.sqrt(values.shape[1]) < FLAT_STD
    values[~flat] /= norms[~flat, None]
    values[flat] = 0.0
    return values, flat


def near_pairs(
    hashes: np.ndarray,
    thumbs: np.ndarray,
    usable: np.ndarray,
    *,
    max_distance: int = NEAR_DISTANCE,
    min_correlation: float = NEAR_CORRELATION,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, distance)`` with ``i < j`` of usable, non-flat rows whose hashes differ in at most
    ``max_distance`` bits and whose thumbnails correlate at ``min_correlation`` or more (module
    docstring). Memory: one block of hashes at a time, plus the pairs found. The last search is
    remembered in this process (keyed by a digest of its inputs): every run of a comparison checks
    the same folder, and at 50,000 images the search takes 4-7 s.

    ``limit``: once more pairs than that are held, they are replaced by the edges that keep their
    groups and each group's largest distance (:func:`compact_pairs`), so memory stays bounded when
    copies come in large families (a burst of near-equal frames links each to every other: 50,000
    crops of 20 photographs gave 1.4 million pairs, one scene shot 50,000 times would give over a
    billion). Without it, every pair."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (hashes, thumbs, usable, np.array([max_distance, min_correlation, limit or 0])):
        digest.update(np.ascontiguousarray(part).view(np.uint8).data)
    key = digest.hexdigest()
    if not (_LAST_SEARCH and _LAST_SEARCH[0] == key):
        _LAST_SEARCH[:] = [key, _search(hashes, thumbs, usable, max_distance, min_correlation, limit)]
    first, second, distance = _LAST_SEARCH[1]
    return first.copy(), second.copy(), distance.copy()


_LAST_SEARCH: list = []
"""``[key, (i, j, distance)]`` of the last :func:`near_pairs` in this process."""


def compact_pairs(
    count: int, first: np.ndarray, second: np.ndarray, distance: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges that join the same groups as the pairs ``(first, second)`` of ``count`` images, one per
    image that is not its group's first (first image, image, the group's largest ``distance``): at
    most ``count - 1`` edges, whatever the number of pairs; :func:`copy_groups` and the largest
    distance per group come out the same."""
    groups = copy_groups(count, first, second)
    largest = np.zeros(count, dtype=np.int64)
    np.maximum.at(largest, groups[first], distance)
    members = np.flatnonzero(groups != np.arange(count))
    return groups[members], members, largest[groups[members]]


def _search(
    hashes: np.ndarray,
    thumbs: np.ndarray,
    usable: np.ndarray,
    max_distance: int,
    min_correlation: float,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = flat_thumbnails(thumbs)  # the unit thumbnails are made per candidate pair: memory stays flat
    rows = np.flatnonzero(usable & ~flat)
    found_i, found_j, found_d = [], [], []
    held = 0
    candidates = hashes[rows].astype(np.uint64)
    count = candidates.size
    xor = np.empty((min(ROW_BLOCK, count), min(COLUMN_BLOCK, count)), dtype=np.uint64)
    bits = np.empty(xor.shape, dtype=np.uint8)
    for top in range(0, count, ROW_BLOCK):
        block = candidates[top : top + ROW_BLOCK]
        for left in range(top, count, COLUMN_BLOCK):
            columns = candidates[left : left + COLUMN_BLOCK]
            xor_view = xor[: block.size, : columns.size]
            bits_view = bits[: block.size, : columns.size]
            np.bitwise_xor(block[:, None], columns[None, :], out=xor_view)
            _popcount(xor_view, bits_view)
            local_i, local_j = np.nonzero(bits_view <= max_distance)
            first, second = local_i + top, local_j + left
            after = second > first
            if not after.any():
                continue
            first, second = first[after], second[after]
            distance = bits_view[local_i[after], local_j[after]]
            i, j = rows[first], rows[second]
            alike = _correlations(thumbs, i, j) >= min_correlation
            found_i.append(i[alike])
            found_j.append(j[alike])
            found_d.append(distance[alike].astype(np.int64))
            held += int(alike.sum())
            if limit is not None and held > limit:
                joined = (np.concatenate(found) for found in (found_i, found_j, found_d))
                kept_i, kept_j, kept_d = compact_pairs(len(hashes), *joined)
                found_i, found_j, found_d, held = [kept_i], [kept_j], [kept_d], kept_i.size
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def copy_groups(count: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The group of each of ``count`` images given linked pairs (connected components: a union-find
    over the pairs): the position of the group's first image, so a lone image is its own group."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    graph = scipy.sparse.coo_matrix((np.ones(first.size, dtype=np.int8), (first, second)), shape=(count, count)).tocsr()
    _, component = connected_components(graph, directed=False)
    leader = np.full(component.max() + 1, count, dtype=np.int64)
    np.minimum.at(leader, component, np.arange(count, dtype=np.int64))
    return leader[component]


__all__ = [
    "NEAR_CORRELATION",
    "NEAR_DISTANCE",
    "compact_pairs",
    "copy_groups",
    "exact_pairs",
    "flat_thumbnails",
    "near_pairs",
    "unit_thumbnails",
]
