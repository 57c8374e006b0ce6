"""Shared fixtures: one local Ray for the session, tiny generated datasets."""

import os

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")

import pytest  # noqa: E402

SECRET = "dtl-test-secret-8f3a1c"  # the tests check it is never written anywhere


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_faults():
    """An S3-compatible server (moto) on 127.0.0.1 behind a proxy that fails every 25th
    request with 503 SlowDown, and the AWS variables pointing at the proxy: every S3 test
    runs through transient errors.

    Started before Ray so that Ray's workers inherit the endpoint and credentials.
    """
    from moto.server import ThreadedMotoServer
    from s3_faults import FaultyProxy

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    with FaultyProxy(port, every=25) as proxy:
        os.environ.update(AWS_ACCESS_KEY_ID="dtl-test-key", AWS_SECRET_ACCESS_KEY=SECRET,
                          AWS_REGION="us-east-1",
                          AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}")
        yield proxy
    server.stop()


@pytest.fixture(scope="session")
def s3_server(s3_faults):
    """The S3 endpoint the tests use (the faulty proxy in front of moto)."""
    return f"http://127.0.0.1:{s3_faults.port}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray (2 CPUs, dashboard on 127.0.0.1) shared by every test that needs it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1",
                 include_dashboard=True, logging_level="WARNING")
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


@pytest.fixture(scope="session")
def tiny_run(ray_session, tiny_demo, tmp_path_factory):
    """The pipeline run stage by stage on the tiny demo; yields (cfg, run dir, summaries)."""
    from dtl_ray import config, pipeline

    out = tmp_path_factory.mktemp("runs")
    cfg = config.load_config(overrides=tiny_overrides(
        tiny_demo / "source", tiny_demo / "target", out, "tiny"))
    summaries = {}
    for stage in pipeline.STAGES:
        doc = pipeline.run(cfg, [stage])
        key = "discriminator" if stage == "discriminate" else stage
        summaries[stage] = doc[key]
    return cfg, os.path.join(out, "tiny"), summaries
