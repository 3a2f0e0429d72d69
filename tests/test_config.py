"""The run file: strict keys with paths and suggestions, safe YAML, stable hashes."""

from __future__ import annotations

import textwrap

import pytest

from headstart.config import load_run_file, parse_run
from headstart.errors import HeadstartError

MINIMAL = {
    "data": {"source": {"kind": "digits"}},
    "model": {"name": "test_resnet", "weights": "none"},
    "stages": [{"name": "task", "epochs": 1}],
}


def test_minimal_run_parses_with_paper_defaults():
    spec = parse_run(MINIMAL)
    assert spec.model.weights is None
    assert spec.stages[0].optimizer.name == "adam"
    assert spec.stages[0].data == "train"
    assert spec.output_dir().name == "run"


def test_unknown_key_names_its_path_and_suggests(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        textwrap.dedent("""
        data: {source: {kind: digits}}
        model: {name: test_resnet}
        stages:
          - {name: a, epochs: 1}
          - {name: b, epochs: 1, freze: [backbone]}
    """)
    )
    with pytest.raises(HeadstartError) as error:
        load_run_file(path)
    message = str(error.value)
    assert str(path) in message
    assert "stages[1].freze" in message
    assert "did you mean 'freeze'" in message


def test_wrong_type_names_path_and_value():
    bad = {**MINIMAL, "stages": [{"name": "task", "epochs": "many"}]}
    with pytest.raises(HeadstartError, match=r"stages\[0\]\.epochs.*'many'"):
        parse_run(bad, "run.yaml")


def test_python_object_tag_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.yaml"
    path.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(HeadstartError, match="refused tag"):
        load_run_file(path)
    assert not marker.exists()


def test_general_stage_needs_general_data():
    bad = {**MINIMAL, "stages": [{"name": "general", "data": "general"}]}
    with pytest.raises(HeadstartError, match="data.general"):
        parse_run(bad)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(HeadstartError, match="no such run file"):
        load_run_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [unclosed\n")
    with pytest.raises(HeadstartError, match="not valid YAML"):
        load_run_file(broken)


def test_config_hash_ignores_output_but_not_training_settings():
    first = parse_run(MINIMAL)
    moved = parse_run({**MINIMAL, "output": "elsewhere"})
    changed = parse_run({**MINIMAL, "stages": [{"name": "task", "epochs": 2}]})
    assert first.config_hash() == moved.config_hash()
    assert first.config_hash() != changed.config_hash()


def test_pretext_stage_cannot_also_declare_a_head():
    bad = {**MINIMAL, "stages": [{"name": "p", "pretext": {"name": "rotation"}, "head": {"outputs": 4}}]}
    with pytest.raises(HeadstartError, match="brings its own head"):
        parse_run(bad)
