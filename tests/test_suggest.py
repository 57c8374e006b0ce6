"""`dtl-ray suggest-labels`: the ranking and the greedy batch on known numbers, then the
command on the session run."""

import os

import numpy as np
import pandas as pd
import pytest

from dtl_ray import cli
from dtl_ray.inference import suggest


def test_value_is_the_mean_percentile_rank_and_a_missing_view_is_left_out():
    entropy = np.array([0.1, 0.9, 0.5])
    distance = np.array([0.0, 0.2, 0.4])
    p = np.array([0.3, 0.2, 0.1])
    np.testing.assert_allclose(suggest.rank(entropy, distance, p),
                               [(0 + 0 + 1) / 3, (1 + 0.5 + 0.5) / 3, (0.5 + 1 + 0) / 3])
    np.testing.assert_allclose(suggest.rank(entropy, distance, np.full(3, np.nan)),
                               [0, 0.75, 0.75])


def test_the_batch_trades_value_for_diversity():
    """Two near-duplicates of high value and one distinct image of lower value: the batch of
    two takes one duplicate and the distinct one, not both duplicates."""
    f = np.array([[1.0, 0.0], [0.999, 0.0447], [0.0, 1.0]])
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    labeled = np.array([[-1.0, 0.0]])  # far from all three
    value = np.array([1.0, 0.95, 0.6])
    assert suggest.pick(value, f, labeled, 2) == [0, 2]
    assert suggest.pick(value, f, labeled, 5) == [0, 2, 1]  # at most all of them
    assert suggest.pick(value, f, np.zeros((0, 2)), 1) == [0]
    # an image equal to a labeled one has no claim while others remain
    assert suggest.pick(np.array([1.0, 0.1]), f[[0, 2]], f[[0]], 1) == [1]


@pytest.mark.slow
def test_suggest_labels_on_a_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "next.csv"
    assert cli.main(["suggest-labels", tiny_run[1], "--budget", "6", "--out", str(out)]) == 0
    assert "suggested 6 of" in capsys.readouterr().out
    df = pd.read_csv(out)
    assert list(df["rank"]) == [1, 2, 3, 4, 5, 6] and df["path"].is_unique
    assert all("/target/unlabeled/" in p for p in df["path"])
    assert df["value"].between(0, 1).all() and df["p_target"].between(0, 1).all()
    assert (df["distance_to_labeled"] >= 0).all()
    sheet = (tmp_path / "next.html").read_text()
    assert sheet.count("<img src='data:image/png;base64,") == 6
    assert cli.main(["suggest-labels", tiny_run[1], "--budget", "0"]) == 2
    assert "--budget must be at least 1" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(tiny_run[1], "suggested_labels.csv"))
