"""dtl-ray bench (tools/bench.py): the summary over seeds and its page."""

import numpy as np
import pytest


def _seed(seed, acc, free):
    return {"seed": seed, "accuracy": acc, "chosen": {"arm": "method",
                                                      "target_test_accuracy": acc["method"]},
            "label_free": {"target_test_accuracy": free}, "heldout_auc": 0.9,
            "ranked_fraction_shared": 0.4, "ranked_fraction_absent": 0.05,
            "adversarial": {"before": 1.5, "after": 0.9},
            "kept_fraction_per_class": {"a": 0.3, "b": 0.0},
            "ranked_fraction_per_class": {"a": 0.4, "b": 0.05}, "dropped_classes": ["b"],
            "test_accuracy_by_cell": [{"strategy": "discriminator", "source_fraction": 0.1,
                                       "target_fraction": 0.0, "best_val_accuracy": 0.9,
                                       "target_test_accuracy": acc["method"]}],
            "p_target_histograms": {"edges": [0.0, 0.5, 1.0],
                                    "counts": {"source/train": [3, 1], "target/test": [1, 3]}},
            "confusion": [[5, 1], [0, 6]], "classes": ["a", "c"]}


def test_bench_summary_and_page(tmp_path):
    from dtl_ray.tools import bench

    seeds = [_seed(0, {"method": 0.9, "random_subset": 0.7, "target_only": 0.95}, 0.8),
             _seed(1, {"method": 1.0, "random_subset": 0.9, "target_only": 0.99}, 1.0)]
    s = bench.summarise(seeds)
    assert s["accuracy"]["method"]["mean"] == pytest.approx(0.95)
    assert s["accuracy"]["random_subset"]["sd"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    # the method's mean 0.95 is above random_subset's 0.8, below target_only's 0.97
    assert s["method_above_mean_of"] == ["random_subset"]
    assert s["label_free"]["mean"] == pytest.approx(0.9)
    # per baseline: method - baseline per seed (0.2, 0.1 and -0.05, 0.01), its spread, wins
    assert s["method_minus"]["random_subset"]["mean"] == pytest.approx(0.15)
    assert s["method_minus"]["random_subset"]["wins"] == 2
    assert s["method_minus"]["target_only"]["mean"] == pytest.approx(-0.02)
    assert s["method_minus"]["target_only"]["sd"] == pytest.approx(np.std([-0.05, 0.01], ddof=1))
    assert s["method_minus"]["target_only"]["wins"] == 1
    lines = bench.summary_lines(s, 3450, 500)
    assert "3450 test images" in lines[0] and "500 val images" in lines[0]
    assert any("method - target_only" in x and "-0.020" in x and "won 1 of 2" in x
               for x in lines)
    doc = {"config": "c.yaml", "pair": "partial", "seeds": seeds, "summary": s, "seconds": 1.0,
           "_plots": bench._plots(seeds, s)}
    assert len(doc["_plots"]) == 6  # fraction, rows, histograms, confusion, kept, PAD
    page = bench._html(doc)
    assert page.count("data:image/png;base64,") == 6 and "without target labels" in page
    assert "1 of 2" in page


def test_bench_rejects_zero_seeds(capsys):
    from dtl_ray import cli

    assert cli.main(["bench", "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_paired_bootstrap_tells_a_real_gap_from_noise():
    from dtl_ray.tools import compare

    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, 2000)

    def model(accuracy, seed):
        r = np.random.default_rng(seed)
        right = r.random(len(label)) < accuracy
        return np.where(right, label, (label + 1) % 5)

    def bits(accuracy, seed):
        return compare.correct_bits(model(accuracy, seed), label)

    gap = [(bits(0.95, s), bits(0.85, 100 + s)) for s in range(3)]
    lo, hi = compare.paired_interval(gap)
    assert 0.05 < lo < 0.1 < hi < 0.15 and compare.call(lo, hi) == "better"
    same = [(bits(0.9, s), bits(0.9, 100 + s)) for s in range(3)]
    lo, hi = compare.paired_interval(same)
    assert lo < 0 < hi and compare.call(lo, hi) == "within noise"
    assert compare.call(*compare.paired_interval([(b, a) for a, b in gap])) == "worse"
    # the pairing: identical predictions have a zero-width interval at 0
    assert compare.paired_interval([(gap[0][0], gap[0][0])]) == (0.0, 0.0)


def test_differences_carry_per_seed_values_and_the_interval():
    from dtl_ray.tools import compare

    seeds = [{"accuracy": {"method": 0.75, "fixmatch": 0.5},
              "correct": {"method": "1110", "fixmatch": "1100"}},
             {"accuracy": {"method": 0.5, "fixmatch": 0.5},
              "correct": {"method": "1010", "fixmatch": "1010"}}]
    d = compare.differences(seeds, ["method", "fixmatch", "adamatch"])
    assert list(d) == ["fixmatch"] and d["fixmatch"]["per_seed"] == [0.25, 0.0]
    assert d["fixmatch"]["wins"] == 1 and d["fixmatch"]["call"] in ("better", "within noise")
    lo, hi = d["fixmatch"]["interval"]
    assert 0 <= lo <= 0.125 <= hi <= 0.5  # the mean gap 0.125; one image of 4 resampled
