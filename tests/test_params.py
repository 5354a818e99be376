"""Params: defaults, the shipped profiles, and clear errors for every kind of bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from anomem.errors import ParamsError
from anomem.params import ARCH_STAGES, DATASETS, DataParams, Params, flatten, load_params, pair_id, parse_params, read_yaml

REPO = Path(__file__).resolve().parents[1]
PARAM_FILES = sorted((REPO / "profiles").glob("*.yaml")) + [REPO / "params.yaml"]


def _error(raw, source: str = "params.yaml") -> str:
    with pytest.raises(ParamsError) as info:
        parse_params(raw, source=source)
    return str(info.value)


# ---- what validates -------------------------------------------------------------------------------


def test_defaults_validate_and_round_trip():
    p = Params()
    assert p.data.num_classes == 10
    assert p.data.names == DATASETS["cifar10"]
    assert p.experiment.classes == list(range(10))
    assert p.memory.scales == [2, 3]
    # the dumped defaults parse back to the same params
    assert parse_params(p.to_dict()) == p
    assert parse_params(None) == p
    assert parse_params({}) == p


def test_defaults_are_the_cpu_profile():
    """A params file that leaves keys out gets what `dvc repro` runs: the field defaults equal profiles/cpu.yaml."""
    cpu = flatten(load_params(REPO / "profiles" / "cpu.yaml").to_dict())
    defaults = flatten(Params().to_dict())
    assert {k: (v, cpu[k]) for k, v in defaults.items() if cpu[k] != v} == {}  # key: (default, profile)
    partial = parse_params({"experiment": {"classes": [3]}})
    assert partial.memory == Params().memory and partial.detector == Params().detector


def test_shipped_profiles_exist():
    names = {f.stem for f in PARAM_FILES}
    assert {"cpu", "smoke", "paper", "params"} <= names


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name if p.name == "params.yaml" else f"profiles/{p.name}")
def test_every_params_file_loads(path):
    p = load_params(path)
    assert isinstance(p, Params)
    raw = yaml.safe_load(path.read_text())
    # every value written in the file is the one validated (no silent drop or rename)
    for group, values in raw.items():
        for key, value in values.items():
            got = getattr(getattr(p, group), key)
            if key == "scales":
                assert got == sorted(value)
            else:
                assert got == value, f"{path.name}: {group}.{key}"


def test_paper_profile_uses_four_stages():
    p = load_params(REPO / "profiles" / "paper.yaml")
    assert p.model.arch == "resnet18"
    assert max(p.memory.scales) <= ARCH_STAGES["resnet18"]


def test_scales_are_sorted():
    assert parse_params({"memory": {"scales": [3, 1, 2]}}).memory.scales == [1, 2, 3]


def test_params_are_frozen():
    p = Params()
    with pytest.raises(Exception):
        p.memory.size = 3  # type: ignore[misc]


# ---- unknown keys ---------------------------------------------------------------------------------


def test_unknown_key_suggests_close_match():
    msg = _error({"memory": {"sise": 3}})
    assert "memory.sise" in msg
    assert "did you mean 'memory.size'" in msg
    # lists what is allowed in that group
    for key in ("scales", "size", "beta", "var_weight"):
        assert key in msg


def test_misspelt_group_suggests_group():
    msg = _error({"memroy": {"size": 3}})
    assert "'memroy'" in msg
    assert "did you mean 'memory'" in msg
    for group in ("data", "model", "memory", "train", "tracking"):
        assert group in msg


def test_unknown_key_without_close_match_still_lists_allowed():
    msg = _error({"train": {"zzzzqqq": 1}})
    assert "train.zzzzqqq" in msg
    assert "did you mean" not in msg
    assert "epochs" in msg and "batch_size" in msg


def test_every_bad_key_is_reported_at_once():
    msg = _error({"memory": {"size": 0}, "train": {"epochs": 0}})
    assert "memory.size = 0" in msg
    assert "train.epochs = 0" in msg


def test_source_is_named():
    msg = _error({"memory": {"size": 0}}, source="some/where.yaml")
    assert "some/where.yaml" in msg


# ---- ranges, types and allowed values -------------------------------------------------------------


# Each bad value fails with a message that names the key, the value and what is allowed.
BAD_VALUES = {
    "memory size below 2": ({"memory": {"size": 0}}, ["memory.size = 0", "greater than or equal to 2"]),
    "class out of range": ({"experiment": {"classes": [10]}}, ["experiment.classes", "[10]", "0..9", "0=airplane", "9=truck"]),
    "negative class": ({"experiment": {"classes": [0, -1]}}, ["[-1]", "0..9"]),
    "unknown setting": (
        {"experiment": {"settings": ["one_class", "three_class"]}},
        ["experiment.settings.1", "'three_class'", "one_class", "unbalanced"],
    ),
    "empty scales": ({"memory": {"scales": []}}, ["memory.scales = []", "at least one scale"]),
    "repeated scale": ({"memory": {"scales": [2, 2]}}, ["memory.scales", "repeated"]),
    "scale beyond the arch": ({"memory": {"scales": [4]}}, ["memory.scales = [4]", "resnet20", "1..3"]),
    "scale zero": ({"memory": {"scales": [0, 2]}}, ["memory.scales", "[0]"]),
    "kNN scale beyond the arch": ({"detector": {"knn_scales": [2, 4]}}, ["detector.knn_scales = [2, 4]", "resnet20", "1..3", "[4]"]),
    "repeated kNN scale": ({"detector": {"knn_scales": [3, 3]}}, ["detector.knn_scales", "repeated"]),
    "unknown arch": ({"model": {"arch": "resnet50"}}, ["model.arch = 'resnet50'", *ARCH_STAGES]),
    "ratio above 1": ({"data": {"ratio_known_outlier": 1.5}}, ["data.ratio_known_outlier = 1.5", "less than or equal to 1"]),
    "negative ratio": ({"data": {"ratio_known_outlier": -0.1}}, ["data.ratio_known_outlier = -0.1", "greater than or equal to 0"]),
    "zero ratio, unbalanced": ({"data": {"ratio_known_outlier": 0.0}}, ["ratio_known_outlier = 0", "unbalanced"]),
    "too many known classes": ({"data": {"n_known_outlier_classes": 10}}, ["n_known_outlier_classes = 10", "9"]),
    "empty seeds": ({"experiment": {"seeds": []}}, ["experiment.seeds = []", "must not be empty"]),
    "negative seed": ({"experiment": {"seeds": [-1]}}, ["experiment.seeds", ">= 0"]),
    "repeated classes": ({"experiment": {"classes": [1, 2, 1]}}, ["experiment.classes = [1, 2, 1]", "repeated"]),
    "repeated settings": ({"experiment": {"settings": ["one_class", "one_class"]}}, ["experiment.settings", "repeated"]),
    "empty combine": ({"detector": {"combine": []}}, ["detector.combine = []", "must not be empty"]),
    "repeated combine": ({"detector": {"combine": ["knn", "knn"]}}, ["detector.combine", "repeated"]),
    "combine only a score the run lacks": (
        {"contrastive": {"rotation_weight": 0.0}, "detector": {"combine": ["rotation"]}},
        ["detector.combine = [rotation]", "rotation_weight = 0"],
    ),
    "batch not a multiple of the shifted instances": (
        {"contrastive": {"shifted_instances": 3}, "train": {"batch_size": 256}},
        ["train.batch_size = 256", "contrastive.shifted_instances = 3", "multiple"],
    ),
    "more shifted instances than turns": ({"contrastive": {"shifted_instances": 5}}, ["contrastive.shifted_instances = 5", "4"]),
    "views at no size": ({"contrastive": {"view_scale": 0}}, ["contrastive.view_scale = 0", "greater than 0"]),
    "views larger than the images": ({"contrastive": {"view_scale": 2}}, ["contrastive.view_scale = 2", "less than or equal to 1"]),
    "wrong type": ({"train": {"epochs": "ten"}}, ["train.epochs = 'ten'", "integer"]),
    "group not a mapping": ({"memory": 5}, ["memory = 5"]),
    "hue above 0.5": ({"contrastive": {"color_jitter": [0.4, 0.4, 0.4, 0.9]}}, ["contrastive.color_jitter", "hue <= 0.5"]),
    "unknown device": ({"train": {"device": "tpu"}}, ["train.device = 'tpu'", "'auto'", "'cpu'", "'cuda'"]),
}


@pytest.mark.parametrize("raw, expected", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_value_is_named_with_what_is_allowed(raw, expected):
    msg = _error(raw)
    missing = [fragment for fragment in expected if fragment not in msg]
    assert not missing, f"the message lacks {missing}:\n{msg}"


def test_scale_4_allowed_with_resnet18():
    p = parse_params({"model": {"arch": "resnet18"}, "memory": {"scales": [4]}})
    assert p.memory.scales == [4]
    msg = _error({"model": {"arch": "resnet18"}, "memory": {"scales": [5]}})
    assert "1..4" in msg


def test_zero_ratio_is_fine_for_one_class():
    p = parse_params({"data": {"ratio_known_outlier": 0.0}, "experiment": {"settings": ["one_class"]}})
    assert p.data.ratio_known_outlier == 0.0


@pytest.mark.parametrize("raw", [[1, 2], "text", 3])
def test_top_level_not_a_mapping(raw):
    msg = _error(raw)
    assert "expected a mapping" in msg
    assert type(raw).__name__ in msg


# ---- data sets ------------------------------------------------------------------------------------


def test_unknown_dataset_without_class_names():
    msg = _error({"data": {"dataset": "svhn"}})
    assert "'svhn'" in msg
    assert "data.class_names" in msg
    assert "cifar10" in msg


def test_unknown_dataset_with_one_class_name_fails():
    msg = _error({"data": {"dataset": "mine", "class_names": ["a"]}})
    assert "'mine'" in msg and "at least 2" in msg


def test_unknown_dataset_with_class_names():
    d = DataParams(dataset="mine", class_names=["a", "b", "c"], n_known_outlier_classes=2)
    assert d.num_classes == 3
    assert d.names == ("a", "b", "c")
    p = parse_params(
        {
            "data": {"dataset": "mine", "class_names": ["a", "b", "c"], "n_known_outlier_classes": 2},
            "experiment": {"classes": [0, 1, 2]},
        }
    )
    assert p.data.num_classes == 3
    assert p.data.names == ("a", "b", "c")


def test_unknown_dataset_classes_checked_against_its_names():
    # with 3 class names, the default experiment.classes (0..9) no longer fit, and the message says why
    msg = _error({"data": {"dataset": "mine", "class_names": ["a", "b", "c"], "n_known_outlier_classes": 2}})
    assert "experiment.classes" in msg and "0..2" in msg and "0=a, 1=b, 2=c" in msg


def test_known_outlier_classes_only_count_where_the_unbalanced_setting_runs():
    three = {"dataset": "mine", "class_names": ["a", "b", "c"]}  # the default n_known_outlier_classes is 9
    assert parse_params({"data": three, "experiment": {"classes": [0, 1], "settings": ["one_class"]}}).data.n_known_outlier_classes == 9
    msg = _error({"data": three, "experiment": {"classes": [0, 1], "settings": ["one_class", "unbalanced"]}})
    assert "data.n_known_outlier_classes = 9" in msg and "only 2 classes besides the normal one" in msg


def test_repeated_class_name():
    msg = _error({"data": {"dataset": "mine", "class_names": ["a", "b", "a"]}})
    assert "repeated" in msg


def test_known_dataset_with_wrong_class_names():
    msg = _error({"data": {"class_names": ["x", "y"]}})
    assert "data.class_names" in msg and "airplane" in msg
    # the exact names are accepted
    assert parse_params({"data": {"class_names": list(DATASETS["cifar10"])}}).data.num_classes == 10


def test_dataset_name_pattern():
    msg = _error({"data": {"dataset": "../etc"}})
    assert "data.dataset = '../etc'" in msg


# ---- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("memory:\n  size: [1, 2\n  beta: 3\n", ["not valid YAML"]),
        ("- data\n- model\n", ["expected a mapping", "list"]),
    ],
    ids=["invalid-yaml", "not-a-mapping"],
)
def test_load_params_unreadable_file_names_the_file(tmp_path, text, expected):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ParamsError) as info:
        load_params(f)
    assert str(f) in str(info.value)
    for words in expected:
        assert words in str(info.value)


def test_load_params_missing_file(tmp_path):
    f = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError) as info:
        load_params(f)
    assert str(f) in str(info.value)
    assert "no such params file" in str(info.value)


def test_load_params_directory_is_not_a_file(tmp_path):
    with pytest.raises(ParamsError):
        load_params(tmp_path)


def test_load_params_empty_file_gives_defaults(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("")
    assert load_params(f) == Params()


def test_load_params_bad_value_names_file_and_key(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"memory": {"sise": 3}}))
    with pytest.raises(ParamsError) as info:
        load_params(f)
    msg = str(info.value)
    assert str(f) in msg and "memory.sise" in msg and "memory.size" in msg


def test_load_params_accepts_edited_copy_of_params_yaml(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["memory"]["size"] = 7
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert load_params(f).memory.size == 7


@pytest.mark.parametrize("text, value", [("5e-05", 5e-05), ("1e-06", 1e-06), ("1e-3", 1e-3), ("2.5E-4", 2.5e-4), ("0.0005", 5e-4)])
def test_exponent_floats_as_dvc_exp_run_writes_them_are_floats(tmp_path, text, value):
    """`dvc exp run -S train.lr=0.00005` writes `lr: 5e-05`, which YAML 1.1 (PyYAML) would read as a string."""
    f = tmp_path / "params.yaml"
    f.write_text((REPO / "params.yaml").read_text().replace("  lr: 0.4\n", f"  lr: {text}\n", 1))
    assert load_params(f).train.lr == value
    assert read_yaml(f"lr: '{text}'") == {"lr": text}, "a quoted value stays a string"


# ---- flatten and pair_id --------------------------------------------------------------------------


def test_flatten_nested():
    d = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}
    assert flatten(d) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}


def test_flatten_prefix_and_flat_input():
    assert flatten({"x": 1}, prefix="p.") == {"p.x": 1}
    assert flatten({}) == {}
    assert flatten({"a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_flatten_params_has_every_field():
    flat = flatten(Params().to_dict())
    n_fields = sum(len(type(getattr(Params(), g)).model_fields) for g in Params.model_fields)
    assert len(flat) == n_fields
    assert flat["memory.scales"] == [2, 3]
    assert flat["tracking.experiment_name"] == "anomem"
    assert all(not isinstance(v, dict) for v in flat.values())


def test_pair_id():
    assert pair_id(3, "unbalanced", 0) == "3-unbalanced-0"
    assert pair_id(0, "one_class", 12) == "0-one_class-12"
    ids = {pair_id(c, s, seed) for c in range(10) for s in ("one_class", "unbalanced") for seed in (0, 1)}
    assert len(ids) == 40  # distinct for every (class, setting, seed)
