"""Checkpoints: one writer and one reader per kind, nothing executable in a file."""

import pytest
import torch

from dtl_ray import config
from dtl_ray.errors import CheckpointError
from dtl_ray.method import builders, domain, models
from dtl_ray.storage import checkpoints


def test_classifier_round_trip_and_meta(tmp_path):
    model = models.build_classifier("smallcnn", 3)
    uri = str(tmp_path / "m.pt")
    checkpoints.save_classifier(uri, model.state_dict(), "smallcnn", ["a", "b", "c"], arm="x")
    state, meta = checkpoints.read_classifier(uri)
    assert meta == {"backbone": "smallcnn", "num_classes": 3, "classes": ["a", "b", "c"],
                    "arm": "x"}
    loaded, _ = builders.load_classifier(uri)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_a_discriminator_is_not_taken_for_a_classifier(tmp_path):
    disc = domain.Discriminator(64, 8)
    uri = str(tmp_path / "d.pt")
    checkpoints.save_discriminator(uri, [disc.state_dict()] * 2, [(2.0, -1.0), (1.5, 0.5)], 0.2,
                                   None, 64, 8, 10, 5, True)
    states, meta = checkpoints.read_discriminator(uri)
    assert meta["in_dim"] == 64 and meta["platt"] == [[2.0, -1.0], [1.5, 0.5]]
    assert len(states) == 2 and set(states[1]) == set(disc.state_dict())
    with pytest.raises(ValueError, match="one"):
        checkpoints.save_discriminator(uri, [disc.state_dict()], [], 0.2, None, 64, 8, 1, 1, True)
    with pytest.raises(CheckpointError, match="not a classifier"):
        checkpoints.read_classifier(uri)
    # the same file given as model.weights: one clear error, not a KeyError from deep inside
    cfg = config.load_config(overrides=["source.uri=s", "target.uri=t", "model.backbone=smallcnn",
                                        f"model.weights={uri}"])
    with pytest.raises(CheckpointError, match="not a classifier"):
        builders.classifier(cfg.model, 3)
    classifier_uri = str(tmp_path / "m.pt")
    checkpoints.save_classifier(classifier_uri, models.build_classifier("smallcnn", 2).state_dict(),
                                "smallcnn", [0, 1])
    with pytest.raises(CheckpointError, match="not a discriminator"):
        checkpoints.read_discriminator(classifier_uri)
