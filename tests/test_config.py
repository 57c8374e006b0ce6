import glob
import os

import pytest

from dtl_ray import config
from dtl_ray.config import load_config
from dtl_ray.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"source": {"uri": "/data/s"}, "target": {"uri": "/data/t"}}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.source.uri and cfg.target.uri
    with open(path) as f:
        assert f.readline().startswith("# Run:"), "each config starts with the command that runs it"


def test_packaged_demo_config_matches_the_checkout():
    with open(os.path.join(ROOT, "configs", "demo.yaml")) as a, \
            open(os.path.join(ROOT, "dtl_ray", "demo.yaml")) as b:
        assert a.read() == b.read()


def test_defaults_and_overrides():
    cfg = load_config(base=BASE, overrides=["pretrain.epochs=3", "model.backbone=smallcnn",
                                            "finetune.lr=[0.1, 0.2]", "model.weights=null"])
    assert cfg.pretrain.epochs == 3
    assert cfg.model.backbone == "smallcnn"
    assert cfg.finetune.lr == [0.1, 0.2]
    assert cfg.model.weights is None
    assert cfg.model.image_size == 224  # a sensible default for real photos


def test_int_is_accepted_for_float():
    cfg = load_config(base={**BASE, "pretrain": {"lr": 1}})
    assert cfg.pretrain.lr == 1.0 and isinstance(cfg.pretrain.lr, float)


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError,
                       match=r"unknown config key 'pretrain.epocs'.*'pretrain.epochs'"):
        load_config(base={**BASE, "pretrain": {"epocs": 3}})


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="unknown config key 'sead'"):
        load_config(base={**BASE, "sead": 1})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="'pretrain.epochs': expected an integer"):
        load_config(base=BASE, overrides=["pretrain.epochs=many"])
    with pytest.raises(ConfigError, match="'scaling.use_gpu': expected true/false"):
        load_config(base=BASE, overrides=["scaling.use_gpu=3"])
    with pytest.raises(ConfigError, match="'data.cache'"):
        load_config(base=BASE, overrides=["data.cache=sometimes"])


def test_out_of_range_and_missing_values():
    with pytest.raises(ConfigError, match="'select.fraction'"):
        load_config(base=BASE, overrides=["select.fraction=1.5"])
    with pytest.raises(ConfigError, match="'source.uri' is required"):
        load_config(base={"target": {"uri": "x"}})
    with pytest.raises(ConfigError, match="finetune.strategies"):
        load_config(base=BASE, overrides=["finetune.strategies=[magic]"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(base=BASE, overrides=["pretrain.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


# each of these used to fail only when its stage ran (hours in), or was silently accepted
LATE_OR_NONSENSE = [
    ("seed=-1", "'seed'"), ("finetune.train_layers=[]", "'finetune.train_layers'"),
    ("finetune.batch_size=0", "'finetune.batch_size': 0 is out of range (expected >= 1)"),
    ("finetune.batch_size=-5", "'finetune.batch_size'"),
    ("finetune.grace_period=0", "'finetune.grace_period'"),
    ("score.batch_size=0", "'score.batch_size'"), ("pretrain.lr=-1", "'pretrain.lr'"),
    ("discriminate.hidden=-1", "'discriminate.hidden'"),
    ("discriminate.hidden=0", "'discriminate.hidden'"),
    ("select.per_class=-1", "'select.per_class'"),
    ("finetune.mix_ratio=0.999", "'finetune.mix_ratio': 0.999 is out of range (expected [0, 0.9])"),
    ("finetune.lr=[0.1, -1]", "each item > 0"), ("finetune.strategies=[]", "is empty"),
    ("pretrain.lr=.nan", "expected a finite number"), ("name=..", "'name'"),
    ("name=a/b", "'name'"), ("name=-x", "'name'"),
    ("storage=gs://b/r", "'storage': 'gs://b/r' has an unsupported scheme"),
    ("model.resize_size=10", "'model.resize_size': 10 is out of range (expected "
                             "[model.image_size="),
]


@pytest.mark.parametrize("override,needle", LATE_OR_NONSENSE)
def test_every_range_is_checked_at_load_time(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(base=BASE, overrides=[override])
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override,needle", [
    ("finetune.lr=[0.1", "'finetune.lr=[0.1': the value is not valid YAML"),
    ("source.uri=@d", "not valid YAML"), ("name=*x", "not valid YAML")])
def test_override_values_that_are_not_yaml_are_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(base=BASE, overrides=[override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_numbers_as_people_write_them_and_hashes_in_paths():
    cfg = load_config(base=BASE, overrides=["pretrain.lr=1e-4", "finetune.lr=[3e-4, 1E-3]",
                                            "source.uri=/data/set #2"])
    assert cfg.pretrain.lr == 1e-4 and cfg.finetune.lr == [3e-4, 1e-3]
    assert cfg.source.uri == "/data/set #2"
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(base=BASE, overrides=["pretrain.lr=fast"])


def test_unreadable_config_files_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(str(tmp_path))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(latin))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\nb: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert "not valid YAML" in str(e.value) and "\n" not in str(e.value)


def test_round_trip_through_dict():
    cfg = load_config(base=BASE, overrides=["seed=7"])
    assert config.from_dict(config.PipelineConfig, config.to_dict(cfg)) == cfg


def test_weighting_is_a_checked_config_key():
    cfg = config.load_config(None, ["source.uri=a", "target.uri=b", "score.weighting=iwan"])
    assert cfg.score.weighting == "iwan"
    with pytest.raises(ConfigError, match="score.weighting"):
        config.load_config(None, ["source.uri=a", "target.uri=b", "score.weighting=kmm"])


def test_adapted_init_needs_adversarial_mode():
    with pytest.raises(ConfigError, match="finetune.init"):
        config.load_config(None, ["source.uri=a", "target.uri=b", "finetune.init=adapted"])


def test_dann_baseline_is_a_checked_option():
    cfg = config.load_config(None, ["source.uri=a", "target.uri=b",
                                    "discriminate.dann_baseline=true", "finetune.init=adapted"])
    assert config.adapts(cfg) and cfg.discriminate.mode == "standard"
