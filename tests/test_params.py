import pytest
import yaml

from stages.params import Params, ParamsError, load_params, load_section, parse_params
from tests.conftest import REPO


def _keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, f"{prefix}{key}.")
    return keys


def test_committed_params_spell_out_every_schema_key():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert load_params(REPO / "params.yaml").data.source == "embedded"
    # nothing hides in code defaults: what DVC tracks is everything the stages read
    assert _keys(raw) == _keys(Params().model_dump())


def test_unknown_key_names_it_and_the_closest_valid_key():
    with pytest.raises(ParamsError) as err:
        parse_params({"train": {"learning_rate": 0.1, "epochs": 2}})
    assert "unknown key 'train.learning_rate'" in str(err.value)
    with pytest.raises(ParamsError, match=r"did you mean 'train\.epochs'"):
        parse_params({"train": {"epoch": 2}})
    with pytest.raises(ParamsError, match=r"did you mean 'transform'"):
        parse_params({"transfrom": {}})


def test_wrong_type_names_key_value_and_expected_type():
    with pytest.raises(ParamsError) as err:
        parse_params({"train": {"epochs": "ten"}})
    message = str(err.value)
    assert "'train.epochs' = 'ten' (str)" in message and "integer" in message
    with pytest.raises(ParamsError, match=r"'train\.epochs' = 1\.5"):
        parse_params({"train": {"epochs": 1.5}})
    with pytest.raises(ParamsError, match=r"'train\.channels_last' = 'yes'"):
        parse_params({"train": {"channels_last": "yes"}})
    with pytest.raises(ParamsError, match=r"'data\.on_corrupt' = 'ignore'"):
        parse_params({"data": {"on_corrupt": "ignore"}})


def test_out_of_range_values_are_rejected():
    with pytest.raises(ParamsError, match=r"split\.val_fraction"):
        parse_params({"split": {"val_fraction": 1.5}})
    with pytest.raises(ParamsError, match=r"train\.batch_size"):
        parse_params({"train": {"batch_size": 0}})


def test_every_problem_is_reported_at_once():
    with pytest.raises(ParamsError, match="3 problem"):
        parse_params({"train": {"epochs": "x", "lr": "y"}, "bogus": 1})


def test_yaml_1_2_floats_and_ints_for_floats(tmp_path):
    # `1e-3` is what users (and `dvc exp run -S train.lr=1e-3`) write; PyYAML alone reads a str
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 0\n")
    train = load_section("train", path)
    assert train.lr == pytest.approx(1e-3) and train.weight_decay == 0.0


def test_invalid_yaml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
