"""Jigsaw: un-permuting the tiles restores the image; the permutation set is the greedy one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

import headstart.pretext as pretext
from headstart.errors import HeadstartError
from headstart.pretext.jigsaw import maximal_hamming_permutations


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_unpermuting_the_tiles_restores_the_image():
    task = pretext.get("jigsaw", permutations=24, tile_fraction=1.0)
    images = torch.rand(12, 3, 30, 30)
    shuffled, labels = task.alter(images, generator())
    assert shuffled.shape == (12, 9, 3, 10, 10)
    order = task.permutation_table[labels]
    restored = torch.empty_like(shuffled)
    restored[torch.arange(12)[:, None], order] = shuffled
    grid = restored.view(12, 3, 3, 3, 10, 10).permute(0, 3, 1, 4, 2, 5).reshape(12, 3, 30, 30)
    assert torch.equal(grid, images)
    assert not torch.equal(
        shuffled, images.unfold(2, 10, 10).unfold(3, 10, 10).permute(0, 2, 3, 1, 4, 5).reshape(12, 9, 3, 10, 10)
    )


def test_each_slot_holds_a_tile_from_the_cell_its_permutation_names():
    task = pretext.get("jigsaw", permutations=10)
    height = width = 75
    index = torch.arange(height * width, dtype=torch.float64).view(1, 1, height, width)
    images = index.repeat(8, 1, 1, 1)
    shuffled, labels = task.alter(images, generator())
    tile = task.input_size((height, width))[0]
    assert tile == int(25 * 64 / 75)
    corners = shuffled[:, :, 0, 0, 0].long()
    order = task.permutation_table[labels]
    cell_row, cell_column = order // 3, order % 3
    top, left = corners // width, corners % width
    assert torch.all((top >= 25 * cell_row) & (top + tile <= 25 * (cell_row + 1)))
    assert torch.all((left >= 25 * cell_column) & (left + tile <= 25 * (cell_column + 1)))


def test_permutation_set_is_the_greedy_maximal_average_hamming_selection():
    """Noroozi & Favaro's Algorithm 1, recomputed with scipy's Hamming distance for the first steps."""
    chosen = maximal_hamming_permutations(6, seed=0).numpy()
    every = np.array(list(itertools.permutations(range(9))))
    assert len({tuple(row) for row in chosen}) == 6
    for step in range(1, 6):
        # scipy gives fractions of 9 positions; whole counts keep ties exact (the first one wins)
        distances = np.rint(cdist(chosen[:step], every, metric="hamming") * 9).sum(axis=0)
        for row in chosen[:step]:
            distances[np.all(every == row, axis=1)] = -1
        assert np.array_equal(every[distances.argmax()], chosen[step])


def test_permutation_set_is_fixed_by_its_seed():
    first = maximal_hamming_permutations(30, seed=0)
    assert torch.equal(first, maximal_hamming_permutations(30, seed=0).clone())
    assert not torch.equal(first, maximal_hamming_permutations(30, seed=1))
    assert torch.equal(torch.sort(first, dim=1).values, torch.arange(9).expand(30, 9))


def test_jigsaw_options_are_checked_and_decoded():
    task = pretext.get("jigsaw", permutations=10)
    assert task.decode(torch.eye(10)[[3, 7]]) == ["perm=3", "perm=7"]
    assert task.chance_level() == {"accuracy": 0.1}
    with pytest.raises(HeadstartError, match="permutations"):
        pretext.get("jigsaw", permutations=1)
    with pytest.raises(HeadstartError, match="tile_fraction"):
        pretext.get("jigsaw", tile_fraction=1.5)
