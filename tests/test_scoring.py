"""The scoring callable on its own (no Ray): cross-fitted discriminators, weights, rejected rows."""

import numpy as np
import pandas as pd
import torch

from dtl_ray.method import calibration, domain, models
from dtl_ray.method.scoring import Scorer
from dtl_ray.storage import checkpoints


def _fold_discriminators(in_dim, k):
    """D_j answers the logit j for every input, so a row's score says which D scored it."""
    out = []
    for j in range(k):
        d = domain.Discriminator(in_dim, 4)
        with torch.no_grad():
            d.net[-1].weight.zero_()
            d.net[-1].bias.fill_(float(j))
        out.append(d.state_dict())
    return out


def test_each_training_row_is_scored_by_the_discriminator_that_did_not_see_it(tmp_path):
    model = models.build_classifier("smallcnn", 3)
    model_uri, disc_uri = str(tmp_path / "m.pt"), str(tmp_path / "d.pt")
    checkpoints.save_classifier(model_uri, model.state_dict(), "smallcnn", [0, 1, 2])
    in_dim = domain.FeatureTap(model.backbone, None)(torch.zeros(2, 3, 16, 16)).shape[1]
    k = 4
    checkpoints.save_discriminator(disc_uri, _fold_discriminators(in_dim, k),
                                   [(1.0, 0.0), (1.0, 0.0), (2.0, 0.0), (1.0, -1.0)], 0.3,
                                   None, in_dim, 4, 1, 1, True)
    n = 200
    splits = [("source", "train"), ("source", "val"), ("target", "unlabeled"),
              ("target", "test")] * (n // 4)
    ids = [f"{d}/{s}/c/{i}.png" for i, (d, s) in enumerate(splits)]
    batch = {"sample_id": np.array(ids, dtype=object),
             "domain": np.array([d for d, _ in splits], dtype=object),
             "split": np.array([s for _, s in splits], dtype=object),
             "image": np.random.default_rng(0).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
             "error": np.array([""] * (n - 1) + ["cannot decode"], dtype=object)}
    out = Scorer(model_uri, [0, 1, 2], disc_uri, image_size=16)(batch)
    trained = calibration.in_training(batch["domain"], batch["split"], pd.Series(ids), 0.3)
    fold = calibration.fold_of(pd.Series(ids), trained, k)
    cal = np.array([0.0, 1.0, 4.0, 2.0])  # a * j + b per fold
    want = np.where(fold >= 0, cal[np.maximum(fold, 0)], cal.mean())
    ok = np.arange(n) < n - 1
    np.testing.assert_allclose(out["logit_target"][ok], want[ok], atol=1e-5)
    assert len(set(fold[ok & trained])) == k and (~trained[ok]).sum() > 50
    np.testing.assert_allclose(out["p_target"][ok], calibration.sigmoid(want[ok]), atol=1e-6)
    # balanced D, density ratio: w = p / (1 - p), capped at 20
    p = np.clip(out["p_target"][ok], 0.01, 0.99)
    np.testing.assert_allclose(out["weight"][ok], np.minimum(p / (1 - p), 20.0), rtol=1e-6)
    assert np.isnan(out["p_target"][-1]) and out["pred"][-1] == -1  # rejected: kept, unscored
