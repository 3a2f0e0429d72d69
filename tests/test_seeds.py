"""headstart.seeds: one derivation for every random stream of a run."""

from headstart import seeds


def test_derived_seeds_are_fixed_and_fit_every_generator():
    assert seeds.derive(3, "stage", 1) == seeds.derive(3, "stage", 1)
    values = [
        seeds.derive(seed, "epoch", stage, epoch) for seed in range(3) for stage in range(3) for epoch in range(20)
    ]
    assert all(0 <= value < 2**32 for value in values)  # numpy, lightning.seed_everything and torch accept it
    assert len(set(values)) == len(values)


def test_streams_that_differ_in_any_part_differ():
    # additive schemes collide: seed 0 stage 1 == seed 1 stage 0 under `seed + index`
    assert seeds.stage(0, 1) != seeds.stage(1, 0)
    assert seeds.epoch(0, 0, 1) != seeds.epoch(0, 1, 0)
    assert seeds.step(0, 0, 0, 0, 1) != seeds.step(0, 0, 0, 1, 0)
    assert seeds.stream(0, 1) != seeds.stream(1, 0)
    assert len({seeds.stage(0, 0), seeds.epoch(0, 0, 0), seeds.stream(0, 0), seeds.step(0, 0, 0, 0, 0)}) == 4
