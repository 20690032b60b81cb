import pytest

from detect.config import ConfigError, config_from_dict, load_config, save_config


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_and_attribute_access():
    cfg = load_config()
    assert cfg.train.batch_size == 2 and cfg.model.backbone.name == "resnet50"
    assert cfg.data.train.format == "coco"
    with pytest.raises(AttributeError, match="did you mean 'lr'"):
        cfg.train.lrr


def test_base_file_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", "train: {lr: 0.02, max_iter: 100}\ninput: {min_size: 300}\n")
    leaf = write(tmp_path / "sub" / "leaf.yaml", "_base_: ../base.yaml\ntrain: {max_iter: 200}\n")
    cfg = load_config(leaf, ["train.batch_size=4", "input.min_size=[200, 250]", "model.backbone.pretrained=null",
                             "train.lr=1e-3", "data.classes=[a, b]"])
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_iter == 200 and cfg.train.batch_size == 4
    assert cfg.input.min_size == [200, 250]
    assert cfg.model.backbone.pretrained is None
    assert cfg.data.classes == ["a", "b"]


def test_unknown_key_names_key_file_and_nearest(tmp_path):
    bad = write(tmp_path / "bad.yaml", "train:\n  max_iters: 10\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "bad.yaml" in msg and "'train.max_iters'" in msg and "'train.max_iter'" in msg
    with pytest.raises(ConfigError, match=r"command line: unknown key 'train.learning_rate' \(nearest valid key: 'train.lr"):
        load_config(None, ["train.learning_rate=0.1"])


def test_wrong_types_and_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.batch_size' must be an integer, got 'two'"):
        load_config(None, ["train.batch_size=two"])
    with pytest.raises(ConfigError, match=r"'train.lr' must be a number"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"'input.min_size' must be a list of integers"):
        load_config(None, ["input.min_size=[a]"])
    with pytest.raises(ConfigError, match=r"'data.train.format' must be one of \['coco', 'voc', 'yolo'\]"):
        load_config(None, ["data.train.format=csv"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["train=3"])
    bad = write(tmp_path / "t.yaml", "model: {backbone: {fpn: yes please}}\n")
    with pytest.raises(ConfigError, match=r"t.yaml: 'model.backbone.fpn' must be true/false"):
        load_config(bad)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    a = write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["input.min_size=[1,2]", "data.category_map={x: null}", "train.seed=7"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_optional_path_can_be_unset_after_a_file_set_it(tmp_path):
    f = write(tmp_path / "c.yaml", "data:\n  test: {ann_file: a.json}\n")
    assert load_config(f).data.test.ann_file == "a.json"
    assert load_config(f, ["data.test.ann_file=null"]).data.test.ann_file is None


def test_every_key_is_described_once_and_its_default_passes_its_own_check():
    from detect.config import KEYS, KEYS_BY_NAME, _check_value, format_keys

    assert len(KEYS_BY_NAME) == len(KEYS)  # no key twice
    listed = format_keys()
    for key in KEYS:
        assert key.doc and "\n" not in key.doc, key.name
        assert _check_value(key, key.default, "the table") == key.default, key.name
        assert f"  {key.name}=" in listed, key.name
    assert all(KEYS_BY_NAME[line.split("=")[0].strip()].test_time
               for line in format_keys(test_time_only=True).splitlines() if line.startswith("  "))


def test_bounds_and_choices_come_from_the_table():
    with pytest.raises(ConfigError, match=r"'model.roi_head.score_thresh' must be between 0 and 1, got 1.5"):
        load_config(None, ["model.roi_head.score_thresh=1.5"])
    with pytest.raises(ConfigError, match=r"'model.test_scales' must be between 0.1 and 4, got 9"):
        load_config(None, ["model.test_scales=[0.75, 9]"])
    with pytest.raises(ConfigError, match=r"'model.backbone.norm' must be one of \['auto', 'frozen_bn', 'bn', 'gn'\]"):
        load_config(None, ["model.backbone.norm=layer"])
