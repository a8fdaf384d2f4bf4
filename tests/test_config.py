"""Configuration: defaults, YAML files, overrides, and the errors bad ones give."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from gmbound.config import (DEFAULTS, DEMO_CONFIG, ConfigError, config_diff, make_config, parse_eps_grid,
                            parse_override, parse_verifiers)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _write(tmp_path, data) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_defaults_validate():
    cfg = make_config()
    assert cfg["train"]["method"] == "gm-crown-ibp"
    assert cfg == make_config(overrides=[])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = make_config(path, check_paths=False)
    assert cfg["name"] == path.stem
    t = cfg["train"]
    if path.stem.startswith(("mnist_0.", "cifar_")):  # the Table 3 rows
        assert cfg["model"]["name"] == "dm-large"
        assert t["n_radii"] == 10 and t["weights"] == "inverse"
        assert cfg["model"]["normalize"] == cfg["data"]["name"].startswith("cifar")


def test_table3_rows_have_configs():
    for data, eps in (("mnist", "0.5"), ("mnist", "0.6"), ("cifar", "17.6"), ("cifar", "22")):
        for method in ("ibp", "crown-ibp", "gm-crown-ibp"):
            cfg = make_config(CONFIGS / f"{data}_{eps}_{method}.yaml", check_paths=False)
            assert cfg["train"]["method"] == method
            expected = float(eps) / 255 if data == "cifar" else float(eps)
            assert cfg["train"]["eps"] == pytest.approx(expected)


def test_demo_yaml_matches_builtin_demo():
    from_file = make_config(CONFIGS / "demo.yaml")
    builtin = make_config(base=DEMO_CONFIG)
    assert from_file == builtin


def test_overrides_are_yaml_and_coerced():
    cfg = make_config(overrides=["train.epochs=3", "train.lr=5e-4", "train.eps=17.6/255", "model.name=mlp",
                                 "model.hidden=[8, 4]", "train.grad_clip=10", "eval.verifiers=ibp,crown"])
    assert cfg["train"]["epochs"] == 3
    assert cfg["train"]["lr"] == 5e-4            # YAML 1.1 reads 5e-4 as a string
    assert cfg["train"]["eps"] == pytest.approx(17.6 / 255)
    assert cfg["model"]["hidden"] == [8, 4]
    assert cfg["train"]["grad_clip"] == 10.0 and isinstance(cfg["train"]["grad_clip"], float)
    assert cfg["eval"]["verifiers"] == ["ibp", "crown"]


@pytest.mark.parametrize("override, words", [
    ("train.epoch=3", ["train.epoch", "train.epochs"]),
    ("trian.epochs=3", ["trian.epochs"]),
    ("train=3", ["train", "section"]),
    ("train.method=gm-crown", ["train.method", "gm-crown"]),
    ("model.name=resnet", ["model.name", "resnet"]),
    ("data.name=imagenet", ["data.name", "imagenet"]),
    ("train.epochs=two", ["train.epochs", "two"]),
    ("train.kappa_end=1.5", ["train.kappa_end"]),
    ("train.weights=exotic", ["train.weights"]),
    ("train.lr_milestones=[5, 3]", ["train.lr_milestones"]),
    ("model.hidden=[8]", ["model.hidden", "mlp"]),
    ("eval.eps_grid=0:a:1", ["eval.eps_grid"]),
    ("eval.verifiers=ibp,deeppoly", ["deeppoly"]),
    ("device=tpu", ["device"]),
    ("noequals", ["key=value"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        make_config(overrides=[override])
    for w in words:
        assert w in str(err.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    p = _write(tmp_path, {"train": {"epochs": 2, "ramp_epoch": 1}})
    with pytest.raises(ConfigError) as err:
        make_config(p)
    assert "train.ramp_epoch" in str(err.value) and "train.ramp_epochs" in str(err.value)
    assert str(p) in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        make_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        make_config(_write(tmp_path, "train: [unclosed"))
    with pytest.raises(ConfigError, match="mapping"):
        make_config(_write(tmp_path, "- 1\n- 2\n"))


def test_missing_data_dir_names_key_and_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(ConfigError) as err:
        make_config(overrides=["data.name=mnist", f"data.dir={missing}"])
    assert "data.dir" in str(err.value) and str(missing) in str(err.value)
    with pytest.raises(ConfigError, match="data.dir"):
        make_config(overrides=["data.name=mnist"])  # no dir at all
    # a folder without the files: the data layer names the files it expected
    from gmbound.train import build_loaders
    cfg = make_config(overrides=["data.name=mnist", f"data.dir={tmp_path}"])
    with pytest.raises(FileNotFoundError) as err:
        build_loaders(cfg)
    assert "train-images-idx3-ubyte" in str(err.value) and "data.dir" in str(err.value)


def test_eps_grid_parsing():
    assert parse_eps_grid("0:0.5:0.01") == pytest.approx([i / 100 for i in range(51)])
    assert len(parse_eps_grid("0:22/255:1/255")) == 23
    assert parse_eps_grid("0.3,0.1") == [0.1, 0.3]
    assert parse_eps_grid([0.2, "1/255"]) == pytest.approx([1 / 255, 0.2])
    for bad in ("0:0.5", "0.5:0:0.1", "0:1:0", "-1:1:0.5", "", [], ["x"]):
        with pytest.raises(ConfigError):
            parse_eps_grid(bad)


def test_parse_helpers():
    assert parse_override("train.epochs=2") == ("train.epochs", 2)
    assert parse_override("data.dir=") == ("data.dir", None)
    assert parse_verifiers("IBP, crown-ibp,ibp") == ["ibp", "crown-ibp"]


def test_config_diff_ignores_resume_mutable_keys():
    a = make_config()
    b = copy.deepcopy(a)
    b["train"]["epochs"] += 5
    b["train"]["progress"] = False
    assert config_diff(a, b) == []
    b["train"]["lr"] = 1.0
    assert config_diff(a, b) == ["train.lr"]


def test_defaults_are_not_mutated():
    before = copy.deepcopy(DEFAULTS)
    cfg = make_config(overrides=["train.lr_milestones=[3]"])
    cfg["train"]["lr_milestones"].append(9)
    assert DEFAULTS == before


def test_resume_diff_treats_new_keys_as_defaults_and_ignores_eval():
    from gmbound.config import DEFAULTS, config_diff

    current = make_config(None, ["eval.pgd_loss=margin"])
    saved = copy.deepcopy(current)
    del saved["eval"]["pgd_eps_grid"]          # a run saved before the key existed
    del saved["train"]["weights"]
    assert config_diff(saved, current) == []
    saved["train"]["lr"] = current["train"]["lr"] * 2
    assert config_diff(saved, current) == ["train.lr"]
    current["train"]["weights"] = "uniform"     # differs from the default that the saved run used
    assert "train.weights" in config_diff(saved, current)
    assert DEFAULTS["train"]["weights"] == "inverse"
