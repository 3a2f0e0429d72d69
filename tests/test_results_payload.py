"""What changes a run's results is decided in one place (RunSpec.results_payload): the config hash
and the comparisons' "same first stages" rule both read it."""

import pytest

from headstart.compare import common_stages
from headstart.config import parse_run
from headstart.errors import HeadstartError
from headstart.validation import validate

BASE = {
    "name": "a",
    "seed": 0,
    "data": {"source": {"kind": "digits"}, "splits": {"labels_per_class": 10}},
    "model": {"name": "test_resnet", "weights": None, "image_size": 16},
    "stages": [
        {"name": "rotation", "data": "all", "pretext": {"name": "rotation"}, "epochs": 1},
        {"name": "task", "epochs": 2},
    ],
}


def _spec(**changes):
    payload = {**BASE, **changes}
    return parse_run(payload)


@pytest.mark.parametrize(
    "how",
    [
        {"data": {**BASE["data"], "residency": "stream"}},  # the same pixels, held or streamed
        {"num_workers": 2},
        {"progress": False},
        {"output": "elsewhere"},
        {"loggers": ["csv", "tensorboard"]},
        {"name": "other-arm"},
    ],
)
def test_arms_that_differ_only_in_how_they_run_share_their_stages(how):
    assert common_stages(_spec(), _spec(**how)) == 2


def test_residency_leaves_the_config_hash_alone_and_a_seed_changes_it():
    assert _spec().config_hash() == _spec(data={**BASE["data"], "residency": "memory"}).config_hash()
    assert _spec().config_hash() != _spec(seed=1).config_hash()


def test_what_changes_weights_stops_the_sharing_at_that_stage():
    later = {**BASE["stages"][1], "optimizer": {"lr": 0.01}}
    assert common_stages(_spec(), _spec(stages=[BASE["stages"][0], later])) == 1
    assert common_stages(_spec(), _spec(seed=1)) == 0


def test_every_spec_error_has_one_format():
    from headstart.config import StageSpec

    with pytest.raises(HeadstartError) as error:
        validate(StageSpec, {"name": "x", "epoch": 3}, "stage")
    assert str(error.value) == "stage: epoch: unknown key; did you mean 'epochs'?"
    with pytest.raises(HeadstartError) as error:
        validate(StageSpec, {"epochs": 3}, "stage")
    assert str(error.value) == "stage: name: missing; this key is required"
    with pytest.raises(HeadstartError) as error:
        parse_run({**BASE, "stages": [{"name": "t", "freeze": "x" * 200}]}, "run.yaml")
    message = str(error.value)
    assert message.startswith("run.yaml: stages[0].freeze: ") and len(message) < 200 and message.endswith("…)")


def _draw(draw: str, **splits) -> dict:
    return {**BASE["data"], "splits": {**BASE["data"]["splits"], "labelled_draw": draw, **splits}}


def test_a_fixed_draw_keeps_the_hash_and_stages_without_labels_are_shared_across_draws():
    # runs written before labelled_draw existed keep their hash: a fixed draw adds nothing to the payload
    assert "labelled_draw" not in _spec(data=_draw("fixed")).results_payload()["data"]["splits"]
    assert _spec(data=_draw("fixed")).config_hash() == _spec().config_hash()
    assert _spec(data=_draw("per_seed")).config_hash() != _spec().config_hash()
    # the rotation stage reads the whole pool without labels: the same whatever the draw and the budget
    assert common_stages(_spec(), _spec(data=_draw("per_seed"))) == 1
    assert common_stages(_spec(data=_draw("per_seed")), _spec(data=_draw("per_seed", labels_per_class=2))) == 1
    # within a seed, arms of one draw share their task stages too; another seed shares nothing
    assert common_stages(_spec(data=_draw("per_seed")), _spec(data=_draw("per_seed"), name="b")) == 2
    assert common_stages(_spec(data=_draw("per_seed")), _spec(data=_draw("per_seed"), seed=1)) == 0
