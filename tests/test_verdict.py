"""headstart.verdict: the statistics of every verdict, against scipy and statsmodels on fixed vectors,
and its error rates on simulated comparisons (null: at most about 5% judged; planted effects found)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import DescrStatsW

from headstart.verdict import (
    MOST_SEEDS,
    corrected,
    evidence_text,
    from_dict,
    holm,
    mcnemar_exact,
    on_test_images,
    over_seeds,
    paired_t_interval,
    seeds_needed,
    verdict_text,
    wilson_interval,
    word_text,
)

DIFFERENCES = [
    [0.001, 0.008, 0.015],
    [0.012, 0.031, 0.004, 0.022, -0.006],
    [-0.04, -0.021],
    [0.0815, 0.0797, 0.0828, 0.0811],
]


@pytest.mark.parametrize("values", DIFFERENCES)
def test_the_paired_interval_is_students_t_as_statsmodels_computes_it(values):
    low, high, p = paired_t_interval(values)
    described = DescrStatsW(np.asarray(values))
    expected_low, expected_high = described.tconfint_mean(alpha=0.05)
    assert (low, high) == (pytest.approx(expected_low), pytest.approx(expected_high))
    assert p == pytest.approx(described.ttest_mean(0.0)[1])
    verdict = over_seeds(values)
    assert (verdict.low, verdict.high, verdict.p_value) == (pytest.approx(low), pytest.approx(high), pytest.approx(p))
    assert verdict.mean == pytest.approx(np.mean(values)) and verdict.std == pytest.approx(np.std(values, ddof=1))
    assert verdict.better_in == sum(v > 0 for v in values) and verdict.n == len(values)


def test_the_readme_claims_the_old_rule_let_through_are_not_resolved():
    """The claim "+0.008 ± 0.007 (n = 3)" was "just beyond the spread": t = 1.98, p ≈ 0.19, −0.009 to +0.025."""
    values = 0.008 + 0.007 * np.array([-1.0, 0.0, 1.0])
    verdict = over_seeds(values)
    assert verdict.word == "not resolved"
    assert verdict.p_value == pytest.approx(0.186, abs=0.002)
    assert (round(verdict.low, 3), round(verdict.high, 3)) == (-0.009, 0.025)
    assert verdict.seeds_needed is not None and verdict.seeds_needed > 3
    assert "about" in word_text(verdict) and "seeds would resolve" in word_text(verdict)
    # two seeds, +0.0315 ± 0.0262: one degree of freedom, p ≈ 0.34
    two = over_seeds(0.0315 + 0.0262 / np.sqrt(2) * np.array([-1.0, 1.0]))
    assert two.word == "not resolved" and two.p_value == pytest.approx(0.34, abs=0.01)
    # a clear gain at three seeds is better, and says so with its interval
    clear = over_seeds([0.081, 0.09, 0.11])
    assert clear.word == "better" and clear.low > 0 and clear.seeds_needed is None
    assert verdict_text(clear).startswith("better: +0.094, 95% CI +0.057 to +0.131 (paired t, 3 seeds, better in 3")
    assert over_seeds([-0.081, -0.09, -0.11]).word == "worse"


def test_seeds_needed_is_the_smallest_count_with_80_percent_power():
    """Checked with scipy's non-central t, independently of statsmodels' solver."""
    for mean, std in ((0.008, 0.007), (0.017, 0.014), (0.03, 0.05)):
        n = seeds_needed(mean, std)
        assert n is not None

        def power(count: int, mean: float = mean, std: float = std) -> float:
            df = count - 1
            critical = stats.t.ppf(0.975, df)
            shift = mean / std * np.sqrt(count)
            return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))

        assert power(n) >= 0.8 > power(n - 1)
    assert seeds_needed(0.0, 0.01) is None and seeds_needed(0.01, 0.0) is None
    assert seeds_needed(0.0001, 0.05) == MOST_SEEDS + 1


def test_mcnemar_and_wilson_match_statsmodels():
    rng = np.random.default_rng(7)
    targets = rng.integers(0, 10, 1000)
    for better_rate, worse_rate in ((0.97, 0.95), (0.9, 0.9), (0.6, 0.62)):
        first = np.where(rng.random(1000) < better_rate, targets, (targets + 1) % 10)
        second = np.where(rng.random(1000) < worse_rate, targets, (targets + 3) % 10)
        right_first, right_second = first == targets, second == targets
        b, c, p = mcnemar_exact(right_first, right_second)
        table = [
            [np.sum(right_first & right_second), np.sum(right_first & ~right_second)],
            [np.sum(~right_first & right_second), np.sum(~right_first & ~right_second)],
        ]
        assert (b, c) == (table[0][1], table[1][0])
        assert p == pytest.approx(mcnemar(table, exact=True).pvalue)
        verdict = on_test_images(first, second, targets)
        assert verdict.method == "McNemar exact" and verdict.discordant == (b, c)
        assert verdict.mean == pytest.approx(right_first.mean() - right_second.mean())
        assert verdict.low <= verdict.mean <= verdict.high
        assert (verdict.low > 0 or verdict.high < 0) == (p < 0.05) or abs(p - 0.05) < 0.01
        for correct, interval in zip((right_first, right_second), verdict.accuracy_intervals, strict=True):
            expected = proportion_confint(int(correct.sum()), 1000, alpha=0.05, method="wilson")
            assert interval == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    assert wilson_interval(975, 1000) == pytest.approx(proportion_confint(975, 1000, method="wilson"))
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact([True], [True, False])


def test_holm_matches_statsmodels_and_turns_borderline_gains_unresolved():
    p_values = [0.01, 0.04, 0.03, 0.2]
    assert holm(p_values) == pytest.approx(list(multipletests(p_values, method="holm")[1]))
    assert holm([0.02]) == [0.02]
    family = corrected([over_seeds([0.03, 0.05, 0.04]), over_seeds([0.03, 0.02, 0.025]), over_seeds([0.01, -0.01])])
    assert [verdict.family for verdict in family] == [3, 3, 3]
    assert all(verdict.p_adjusted >= verdict.p_value for verdict in family)
    assert "Holm-adjusted over 3 arms" in evidence_text(family[0])
    alone = over_seeds([0.012, 0.02, 0.016])
    assert alone.word == "better"
    crowded = corrected([alone] + [over_seeds([0.001, -0.002, 0.0015])] * 4)[0]
    assert crowded.word == "not resolved" and crowded.seeds_needed is not None  # corrected over 5 arms
    # planned at α / 5 and never fewer seeds than the three that did not resolve it
    assert crowded.seeds_needed == max(4, seeds_needed(alone.mean, alone.std, confidence=1 - 0.05 / 5))
    assert crowded.seeds_needed > seeds_needed(alone.mean, alone.std)


def test_one_seed_without_predictions_is_not_resolved_and_says_why():
    verdict = over_seeds([0.02])
    assert verdict.word == "not resolved" and verdict.method == "none" and verdict.low is None
    assert "2 or more seeds" in word_text(verdict)
    same = over_seeds([0.0, 0.0, 0.0])
    assert same.word == "not resolved" and "no difference at any seed" in word_text(same)
    assert from_dict(verdict.as_dict()) == verdict
    mc = on_test_images([1, 2, 3], [1, 2, 0], [1, 2, 3])
    assert from_dict(mc.as_dict()) == mc


def test_null_comparisons_come_out_better_or_worse_in_about_five_percent():
    """1,000 comparisons of two arms drawn from one distribution (three seeds; each seed's test
    accuracies share a seed effect, as paired runs do): at most about 5% judged better or worse,
    and about as many of each; the same for one seed judged on 1,000 test images by McNemar."""
    rng = np.random.default_rng(2026)
    judged = 0
    words = {"better": 0, "worse": 0, "not resolved": 0}
    for _ in range(1000):
        seed_effect = rng.normal(0.0, 0.015, 3)
        first = 0.9 + seed_effect + rng.normal(0.0, 0.01, 3)
        second = 0.9 + seed_effect + rng.normal(0.0, 0.01, 3)
        word = over_seeds(list(first - second)).word
        words[word] += 1
        judged += word != "not resolved"
    assert judged / 1000 <= 0.07, words
    assert words["better"] > 5 and words["worse"] > 5  # the test is not one-sided or dead
    targets = rng.integers(0, 10, 1000)
    judged = 0
    for _ in range(300):
        first = np.where(rng.random(1000) < 0.95, targets, (targets + 1) % 10)
        second = np.where(rng.random(1000) < 0.95, targets, (targets + 1) % 10)
        judged += on_test_images(first, second, targets).word != "not resolved"
    assert judged / 300 <= 0.08  # the exact test is conservative: below 5% in expectation


def test_a_planted_effect_of_two_standard_deviations_at_five_seeds_comes_out_better():
    """Arms whose accuracies spread by σ over seeds, one 2σ above the other (the paired differences
    then spread by σ√2: power ≈ 0.66 at 5 seeds): better in most trials, worse in none."""
    rng = np.random.default_rng(11)
    sigma = 0.01
    words = {"better": 0, "worse": 0, "not resolved": 0}
    for _ in range(400):
        base = 0.9 + rng.normal(0.0, sigma, 5)
        arm = 0.9 + 2 * sigma + rng.normal(0.0, sigma, 5)
        words[over_seeds(list(arm - base)).word] += 1
    assert words["better"] / 400 > 0.55 and words["worse"] == 0, words


# ------------------------------------------------------------------ metrics that see the small classes

METRIC_CASES = [
    # (targets, predictions, classes): every class present; a class never predicted; a tie-free mess
    ([0, 0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 1, 0, 1, 2, 2, 2, 0, 2], 3),
    ([0] * 18 + [1] * 2, [0] * 20, 2),
    ([3, 1, 2, 0, 1, 3, 3, 2, 0, 1, 2, 3], [3, 1, 1, 0, 2, 3, 0, 2, 0, 1, 2, 2], 4),
]


@pytest.mark.parametrize(("targets", "predicted", "classes"), METRIC_CASES)
def test_class_metrics_are_torchmetrics_and_scikit_learns(targets, predicted, classes):
    import torch
    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

    from headstart.metrics import class_metrics, confusion_matrix

    got = class_metrics(confusion_matrix(predicted, targets, classes))
    guess, truth = torch.tensor(predicted), torch.tensor(targets)
    assert got["balanced_accuracy"] == pytest.approx(float(MulticlassAccuracy(classes, average="macro")(guess, truth)))
    assert got["macro_f1"] == pytest.approx(float(MulticlassF1Score(classes, average="macro")(guess, truth)))
    assert got["recall"] == pytest.approx(MulticlassRecall(classes, average=None)(guess, truth).tolist())
    assert got["accuracy"] == pytest.approx(float(np.mean(np.equal(targets, predicted))))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(targets, predicted))
    labels = list(range(classes))
    assert got["macro_f1"] == pytest.approx(
        f1_score(targets, predicted, average="macro", labels=labels, zero_division=0)
    )
    assert got["recall"] == pytest.approx(recall_score(targets, predicted, average=None, labels=labels).tolist())


def test_a_class_without_test_images_has_no_recall_and_counts_as_torchmetrics_counts_it():
    """Class 2 has no test image but is predicted once: its recall is None here (torchmetrics says 0),
    and balanced accuracy and macro F1 keep it in the mean as torchmetrics does (a false positive)."""
    import torch
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    from headstart.metrics import class_metrics, confusion_matrix

    targets, predicted = [0, 0, 1, 1, 1], [0, 2, 1, 1, 0]
    got = class_metrics(confusion_matrix(predicted, targets, 4))
    assert got["recall"] == [0.5, pytest.approx(2 / 3), None, None]
    guess, truth = torch.tensor(predicted), torch.tensor(targets)
    assert got["balanced_accuracy"] == pytest.approx(float(MulticlassAccuracy(4, average="macro")(guess, truth)))
    assert got["macro_f1"] == pytest.approx(float(MulticlassF1Score(4, average="macro")(guess, truth)))


def test_auto_judges_imbalanced_labelled_classes_on_balanced_accuracy_and_says_so():
    from headstart.metrics import IMBALANCE_RATIO, choose_metric

    metric, reason = choose_metric("auto", {"cat": 900, "fox": 40})
    assert metric == "balanced_accuracy"
    assert reason == "judged on balanced accuracy: the labelled classes are imbalanced, 900 (cat) against 40 (fox)"
    metric, reason = choose_metric("auto", {"0": 178, "1": 182, "2": 177})  # digits
    assert metric == "accuracy" and reason.startswith("judged on accuracy: the labelled classes are balanced")
    assert choose_metric("auto", {"a": 150, "b": 100})[0] == "accuracy" and IMBALANCE_RATIO == 1.5
    assert choose_metric("auto", {"a": 151, "b": 100})[0] == "balanced_accuracy"
    assert choose_metric("auto", {"a": 3, "b": 0})[0] == "balanced_accuracy"
    assert choose_metric("auto", None)[0] == "accuracy"  # runs of an earlier version: as they were judged
    assert choose_metric("macro_f1", {"cat": 900, "fox": 40}) == (
        "macro_f1",
        "judged on macro F1: the comparison file asks for it (metric: macro_f1)",
    )
    assert choose_metric("accuracy", {"cat": 900, "fox": 40})[0] == "accuracy"


@pytest.mark.parametrize("metric", ["balanced_accuracy", "macro_f1", "accuracy"])
def test_the_paired_bootstrap_is_the_direct_computation(metric):
    """The bootstrap against a plain loop: default_rng(0), one integers(0, N, N) per resample, the
    metric from scikit-learn on the drawn images, the 2.5/97.5 percentiles, and p = 2 × the share of
    resamples at or beyond zero on the other side, capped at 1."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    from headstart.verdict import paired_bootstrap

    rng = np.random.default_rng(3)
    targets = np.r_[np.zeros(60, int), np.ones(25, int), np.full(15, 2)]
    against = np.where(rng.random(100) < 0.85, targets, 0)  # misses the small classes more often
    arm = np.where(rng.random(100) < 0.8, targets, (targets + 1) % 3)

    def score(truth, guess):
        if metric == "balanced_accuracy":
            present = np.union1d(truth, guess)  # torchmetrics' macro mean: classes seen in either
            recalls = [np.mean(guess[truth == c] == c) if np.any(truth == c) else 0.0 for c in present]
            return float(np.mean(recalls))
        if metric == "macro_f1":
            return f1_score(truth, guess, average="macro", labels=np.union1d(truth, guess), zero_division=0)
        return accuracy_score(truth, guess)

    draws = np.random.default_rng(0)
    differences = []
    for _ in range(2000):
        drawn = draws.integers(0, 100, 100)
        differences.append(score(targets[drawn], arm[drawn]) - score(targets[drawn], against[drawn]))
    differences = np.array(differences)
    observed = score(targets, arm) - score(targets, against)
    if metric == "balanced_accuracy":
        assert observed == pytest.approx(
            balanced_accuracy_score(targets, arm) - balanced_accuracy_score(targets, against)
        )
    share = np.mean(differences <= 0) if observed > 0 else np.mean(differences >= 0)
    verdict = paired_bootstrap(arm, against, targets, metric=metric, num_classes=3)
    assert verdict.method == "paired bootstrap" and verdict.metric == metric and verdict.resamples == 2000
    assert verdict.mean == pytest.approx(observed)
    assert verdict.low == pytest.approx(np.percentile(differences, 2.5))
    assert verdict.high == pytest.approx(np.percentile(differences, 97.5))
    assert verdict.p_value == pytest.approx(min(1.0, 2 * share))
    assert verdict.word == ("not resolved" if verdict.p_value >= 0.05 else "better" if observed > 0 else "worse")
    assert from_dict(verdict.as_dict()) == verdict
    text = verdict_text(verdict)
    assert "paired bootstrap of the 100 test images, 2,000 resamples" in text and "95% CI" in text


def test_the_paired_bootstrap_finds_a_planted_small_class_gain_and_keeps_nulls_near_five_percent():
    from headstart.verdict import paired_bootstrap

    rng = np.random.default_rng(5)
    targets = np.r_[np.zeros(180, int), np.ones(20, int)]
    sees = np.where(rng.random(200) < 0.95, targets, 1 - targets)
    blind = np.zeros(200, int)  # never says the small class: accuracy 0.90, balanced accuracy 0.50
    found = paired_bootstrap(sees, blind, targets, metric="balanced_accuracy", num_classes=2)
    assert found.word == "better" and found.low > 0.3
    assert on_test_images(sees, blind, targets).mean < 0.1  # in accuracy the two are near each other
    judged = 0
    targets = rng.integers(0, 3, 300)
    for _ in range(150):
        first = np.where(rng.random(300) < 0.8, targets, (targets + 1) % 3)
        second = np.where(rng.random(300) < 0.8, targets, (targets + 1) % 3)
        judged += paired_bootstrap(first, second, targets, metric="balanced_accuracy").word != "not resolved"
    assert judged / 150 <= 0.10  # the percentile bootstrap runs a little over 5% on 300 images
    with pytest.raises(ValueError, match="same test images"):
        paired_bootstrap([0, 1], [0], [0, 1], metric="macro_f1")
