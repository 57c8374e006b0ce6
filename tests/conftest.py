"""Shared fixtures: one local Ray for the session, tiny generated datasets."""

import os

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs, dashboard on 127.0.0.1) shared by every test that needs it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, dashboard_host="127.0.0.1", include_dashboard=True,
                 logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The demo pair at a tenth of its size (seed 3)."""
    from dtl_ray import demo

    root = tmp_path_factory.mktemp("tiny_demo")
    demo.write_demo(str(root), seed=3, scale=0.1)
    return root


def tiny_overrides(source, target, storage, name):
    """A config small enough that the whole pipeline runs in about a minute on 2 cores."""
    return [f"source.uri={source}", f"target.uri={target}", f"storage={storage}",
            f"name={name}", "model.backbone=smallcnn", "model.image_size=32",
            "pretrain.epochs=2", "discriminate.epochs=3", "finetune.epochs=2",
            "finetune.grace_period=1", "finetune.source_fractions=[0.25]",
            "finetune.target_fractions=[0.0, 0.5]", "finetune.lr=[0.003]",
            "finetune.train_layers=[all]", "finetune.num_samples=1", "data.batch_size=32",
            "score.batch_size=64"]
