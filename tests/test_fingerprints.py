"""Which settings each stage's outputs depend on."""

from dtl_ray.config import load_config
from dtl_ray.pipeline import fingerprints

BASE = {"source": {"uri": "/data/s"}, "target": {"uri": "/data/t"}}


def test_settings_are_cumulative_and_leave_out_how_a_stage_runs():
    cfg = load_config(base=BASE)
    pre = fingerprints.settings(cfg, "pretrain")
    sel = fingerprints.settings(cfg, "select")
    assert pre["pretrain.lr"] == cfg.pretrain.lr and pre["source.uri"] == "/data/s"
    assert "discriminate.epochs" not in pre and "select.fraction" not in pre
    assert set(pre) < set(sel) and sel["discriminate.epochs"] == cfg.discriminate.epochs
    assert not any(k.startswith(("scaling.", "finetune.")) for k in sel)
    assert "data.cache" not in sel and "name" not in sel and "storage" not in sel


def test_a_change_is_seen_by_its_stage_and_every_later_one_only():
    a = load_config(base=BASE)
    b = load_config(base=BASE, overrides=["score.clip=0.05", "scaling.num_workers=4"])
    for stage in ("pretrain", "discriminate"):
        assert fingerprints.settings(a, stage) == fingerprints.settings(b, stage)
    for stage in ("score", "select", "finetune", "evaluate"):
        assert fingerprints.changes(fingerprints.settings(a, stage),
                                    fingerprints.settings(b, stage)) == ["score.clip: 0.01 -> 0.05"]
