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
