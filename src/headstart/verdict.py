"""Did one arm beat another? The one place headstart judges, on ``scipy.stats`` and ``statsmodels``.

Every verdict of a comparison — the winner against the baseline, each contrast, what a later stage
added, at every label budget — is a :class:`Verdict` made here, in one of three words:

* **better** — the difference is above zero at the 95% level;
* **worse** — below zero at the 95% level;
* **not resolved** — neither; the verdict then says about how many seeds would resolve a difference
  of the observed size at the observed paired spread (:func:`seeds_needed`).

How a difference is tested depends on what the runs give:

* **several seeds** (n ≥ 2 pairs: the same seed, splits and test images, different arm) — Student's
  t over the paired differences (``scipy.stats.ttest_1samp``): the mean difference, its 95%
  confidence interval (n − 1 degrees of freedom) and the two-sided p-value. With three seeds the t
  quantile is 4.30, so a gain must be more than 2.5 times the std of the differences to count:
  "+0.008 ± 0.007 over 3 seeds" gives t = 1.98, p ≈ 0.19, an interval of −0.009 to +0.025, not resolved.
* **one seed** — McNemar's exact test on the two networks' predictions of the same test images
  (:func:`mcnemar_exact`; McNemar 1947, Dietterich 1998 for comparing classifiers): only the
  images that one network got right and the other wrong count. It says whether these two trained
  networks differ on these test images, not whether the arms differ over seeds. Each arm's
  accuracy gets a Wilson 95% interval (:func:`wilson_interval`; about ±0.01 at 0.975 on 1,000 images).
* **one seed, judged on balanced accuracy or macro F1** — McNemar's test counts images, so it fits
  accuracy only; a paired bootstrap over the test images (:func:`paired_bootstrap`; Efron &
  Tibshirani 1993) resamples the images both networks predicted and reads the 95% percentile
  interval of the metric's difference and a two-sided p-value from the share of resamples on the
  other side of zero.
* **several arms against one baseline** in one label budget — the p-values are corrected for the
  number of arms with Holm's step-down method (Holm 1979; ``statsmodels.stats.multitest``), and the
  verdict says so. The 95% interval shown stays the plain, per-comparison one.

Which metric judges, and the metrics themselves, are :mod:`headstart.metrics`: accuracy, balanced
accuracy (the mean of the per-class recalls) or macro F1, from confusion matrices with torchmetrics'
conventions.

The FixMatch paper (Sohn et al. 2020) reports mean ± std over 5 labelled folds because a single
draw of 4 labels per class moves CIFAR-10 accuracy by several points; headstart's verdicts add the
interval and the test that the mean ± std alone leaves to the reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from headstart.metrics import Metric, confusion_matrix, metric_scores

CONFIDENCE = 0.95
"""Level of every interval and test (two-sided α = 0.05)."""
POWER = 0.80
"""Power that :func:`seeds_needed` plans for (the customary 80%)."""
MOST_SEEDS = 1000
"""Above this many seeds, :func:`seeds_needed` says "more than 1,000": the difference is negligible
against the spread."""

BOOTSTRAP_RESAMPLES = 2000
"""Resamples of :func:`paired_bootstrap`: the 2.5% and 97.5% percentiles then rest on 50 resamples
beyond each end, and a p-value is resolved to 0.001."""
Word = Literal["better", "worse", "not resolved"]


@dataclass(frozen=True)
class Verdict:
    """One paired comparison: ``arm`` minus ``against`` in test accuracy (or the judging metric).

    ``low``/``high``: the 95% confidence interval of the mean difference (``None`` when none can be
    given); ``p_value``: two-sided, before any correction; ``p_adjusted``: after Holm's correction
    over ``family`` comparisons (equal to ``p_value`` when ``family`` is 1); ``better_in``: pairs
    (seeds) where the arm was ahead, of ``n``; ``seeds_needed``: for "not resolved" over seeds, about
    how many seeds resolve a difference of this size at this paired spread (80% power)."""

    word: Word
    method: Literal["paired t", "McNemar exact", "paired bootstrap", "none"]
    n: int
    mean: float
    better_in: int
    std: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    family: int = 1
    seeds_needed: int | None = None
    discordant: tuple[int, int] | None = None
    """McNemar only: (images only the arm got right, images only ``against`` got right)."""
    accuracy_intervals: tuple[tuple[float, float], tuple[float, float]] | None = None
    """McNemar only: Wilson 95% intervals of the two arms' accuracies."""
    note: str = ""
    metric: Metric = "accuracy"
    """What the difference is in (:data:`headstart.metrics.METRICS`); verdicts written before the
    choice are in accuracy."""
    resamples: int | None = None
    """Paired bootstrap only: how many resamples of the test images."""

    def as_dict(self) -> dict[str, Any]:
        """The verdict as ``comparison.json`` stores it."""
        return asdict(self)


def paired_t_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(low, high, p)``: Student's t interval of the mean of ``differences`` and the two-sided
    p-value of "the mean is zero" (``scipy.stats.ttest_1samp``). Needs two or more values; when
    every difference is the same the interval is that value and p is 0 (or 1 when it is zero)."""
    values = np.asarray(differences, dtype=float)
    if values.size < 2:
        raise ValueError("a paired t interval needs at least two differences")
    if np.ptp(values) == 0.0:
        value = float(values[0])
        return value, value, 1.0 if value == 0.0 else 0.0
    result = stats.ttest_1samp(values, 0.0)
    interval = result.confidence_interval(confidence_level=confidence)
    return float(interval.low), float(interval.high), float(result.pvalue)


def seeds_needed(mean: float, std: float, *, confidence: float = CONFIDENCE, power: float = POWER) -> int | None:
    """About how many paired seeds a two-sided paired t-test needs to find a difference of ``mean``
    when the paired differences spread by ``std``, at ``power`` (``statsmodels``' ``TTestPower`` with
    effect size |mean| / std). ``None`` when there is no difference to find (mean 0) or no spread;
    :data:`MOST_SEEDS` + 1 when more than that would be needed."""
    if mean == 0.0 or not std or not math.isfinite(std):
        return None
    from statsmodels.stats.power import TTestPower

    effect = abs(mean) / std
    if effect < 0.09:  # n > ~1,000 at 80% power: solve_power's bracket search is slow and unneeded
        return MOST_SEEDS + 1
    needed = TTestPower().solve_power(effect_size=effect, alpha=1 - confidence, power=power, alternative="two-sided")
    needed = float(np.asarray(needed).reshape(-1)[0])
    if not math.isfinite(needed):
        return MOST_SEEDS + 1
    return min(MOST_SEEDS + 1, max(2, math.ceil(needed)))


def wilson_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of an accuracy of ``correct`` out of ``total`` (Wilson 1927;
    ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``): unlike the plain ±1.96 √(p(1−p)/n)
    it stays inside [0, 1] and keeps its coverage near 0 and 1."""
    if total <= 0:
        raise ValueError("an accuracy interval needs at least one test image")
    interval = stats.binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def mcnemar_exact(correct_arm: Sequence[bool], correct_against: Sequence[bool]) -> tuple[int, int, float]:
    """``(b, c, p)``: McNemar's exact test of two classifiers on the same images. ``b`` counts the
    images only the arm got right, ``c`` those only ``against`` got right; under "no difference" each
    of the b + c discordant images is a fair coin, so p is the two-sided binomial test of b out of
    b + c at ½ (``scipy.stats.binomtest``; the same as ``statsmodels``' ``mcnemar(exact=True)``)."""
    arm = np.asarray(correct_arm, dtype=bool)
    other = np.asarray(correct_against, dtype=bool)
    if arm.shape != other.shape:
        raise ValueError(f"McNemar's test needs predictions of the same images: {arm.size} against {other.size}")
    b = int(np.sum(arm & ~other))
    c = int(np.sum(~arm & other))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979; ``statsmodels.stats.multitest.multipletests``):
    the family-wise error stays at 5% however many arms are tested against one baseline."""
    if len(p_values) <= 1:
        return [float(p) for p in p_values]
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(p_values), alpha=1 - CONFIDENCE, method="holm")[1]]


# ---------------------------------------------------------------------------- the verdicts


def _word(mean: float, p: float | None, confidence: float = CONFIDENCE) -> Word:
    if p is None or p >= 1 - confidence or mean == 0.0:
        return "not resolved"
    return "better" if mean > 0 else "worse"


def over_seeds(differences: Sequence[float], *, confidence: float = CONFIDENCE, metric: Metric = "accuracy") -> Verdict:
    """The verdict of paired differences over seeds (arm minus ``against`` at each seed, in ``metric``):
    Student's t for two or more, "not resolved" for one (use :func:`on_test_images` or
    :func:`paired_bootstrap` then) or none."""
    values = [float(value) for value in differences]
    n = len(values)
    better_in = sum(1 for value in values if value > 0)
    if n < 2:
        return Verdict(
            word="not resolved",
            method="none",
            n=n,
            mean=values[0] if values else 0.0,
            better_in=better_in,
            note="one seed and no per-image test predictions: no test can be made" if n else "no paired seeds",
            metric=metric,
        )
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1))
    low, high, p = paired_t_interval(values, confidence)
    word = _word(mean, p, confidence)
    needed = seeds_needed(mean, std, confidence=confidence) if word == "not resolved" else None
    return Verdict(
        word=word,
        method="paired t",
        n=n,
        mean=mean,
        std=std,
        low=low,
        high=high,
        p_value=p,
        p_adjusted=p,
        better_in=better_in,
        seeds_needed=None if needed is None else max(needed, n + 1),
        note="the same difference at every seed" if std == 0.0 and n >= 2 else "",
        metric=metric,
    )


def on_test_images(
    predicted_arm: Sequence[int],
    predicted_against: Sequence[int],
    targets: Sequence[int],
    *,
    confidence: float = CONFIDENCE,
) -> Verdict:
    """The verdict of one seed: McNemar's exact test on both arms' predictions of the same test
    images, with the exact conditional interval of the accuracy difference (Clopper–Pearson on the
    share b / (b + c) of discordant images the arm won, scaled by (b + c) / N) and a Wilson interval
    of each arm's accuracy."""
    target = np.asarray(targets)
    arm = np.asarray(predicted_arm) == target
    other = np.asarray(predicted_against) == target
    b, c, p = mcnemar_exact(arm, other)
    total = int(target.size)
    mean = (b - c) / total if total else 0.0
    if b + c:
        share = stats.binomtest(b, b + c).proportion_ci(confidence_level=confidence, method="exact")
        scale = (b + c) / total
        low, high = scale * (2 * float(share.low) - 1), scale * (2 * float(share.high) - 1)
    else:
        low = high = 0.0
    return _one_seed(
        mean,
        low,
        high,
        p,
        "McNemar exact",
        confidence,
        discordant=(b, c),
        accuracy_intervals=(
            wilson_interval(int(arm.sum()), total, confidence),
            wilson_interval(int(other.sum()), total, confidence),
        ),
    )


def _one_seed(mean: float, low: float, high: float, p: float, method: Any, confidence: float, **extra: Any) -> Verdict:
    """A verdict of one seed's test images (:func:`on_test_images`, :func:`paired_bootstrap`)."""
    return Verdict(
        word=_word(mean, p, confidence),
        method=method,
        n=1,
        mean=mean,
        low=low,
        high=high,
        p_value=p,
        p_adjusted=p,
        better_in=1 if mean > 0 else 0,
        **extra,
    )


def paired_bootstrap(
    predicted_arm: Sequence[int],
    predicted_against: Sequence[int],
    targets: Sequence[int],
    *,
    metric: Metric,
    num_classes: int | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Verdict:
    """The verdict of one seed in any metric: a paired bootstrap over the test images (Efron &
    Tibshirani 1993, ch. 13 and 16). Each of ``resamples`` draws N of the N images with replacement
    (``numpy.random.default_rng(seed)``, one ``integers(0, N, N)`` per resample), keeping both networks'
    predictions of each drawn image, and computes the difference in ``metric`` (arm minus
    ``against``, :func:`headstart.metrics.class_metrics`). The interval is the 2.5th to 97.5th percentile of these
    differences; the two-sided p-value is twice the share of resamples on the other side of zero
    from the observed difference (zero counted as the other side), capped at 1 — 1 when the
    observed difference is zero. Like McNemar's test, it judges these two networks on these test
    images, not the arms over seeds."""
    target = np.asarray(targets, dtype=np.int64)
    arm = np.asarray(predicted_arm, dtype=np.int64)
    other = np.asarray(predicted_against, dtype=np.int64)
    if not (arm.shape == other.shape == target.shape) or target.size == 0:
        raise ValueError(
            f"a paired bootstrap needs both networks' predictions of the same test images: {arm.size} and "
            f"{other.size} predictions of {target.size} images"
        )
    k = num_classes or int(max(target.max(), arm.max(), other.max()) + 1)
    total = int(target.size)
    mean = float(
        metric_scores(metric, confusion_matrix(arm, target, k))
        - metric_scores(metric, confusion_matrix(other, target, k))
    )
    rng = np.random.default_rng(seed)
    cells = k * k
    arm_cells, other_cells = target * k + arm, target * k + other
    arm_counts = np.empty((resamples, k, k), dtype=np.int64)
    other_counts = np.empty((resamples, k, k), dtype=np.int64)
    for index in range(resamples):
        drawn = rng.integers(0, total, total)
        arm_counts[index] = np.bincount(arm_cells[drawn], minlength=cells).reshape(k, k)
        other_counts[index] = np.bincount(other_cells[drawn], minlength=cells).reshape(k, k)
    differences = metric_scores(metric, arm_counts) - metric_scores(metric, other_counts)
    tail = (1 - confidence) / 2
    low, high = (float(value) for value in np.percentile(differences, [100 * tail, 100 * (1 - tail)]))
    if mean == 0.0:
        p = 1.0
    else:
        beyond = differences <= 0 if mean > 0 else differences >= 0
        p = min(1.0, 2 * float(np.mean(beyond)))
    return _one_seed(
        mean,
        low,
        high,
        p,
        "paired bootstrap",
        confidence,
        note=f"paired bootstrap of the {total:,} test images, {resamples:,} resamples",
        metric=metric,
        resamples=resamples,
    )


def corrected(verdicts: Sequence[Verdict], *, confidence: float = CONFIDENCE) -> list[Verdict]:
    """``verdicts`` of one family (several arms against one baseline) with Holm-adjusted p-values
    and words from them; the seeds a "not resolved" one needs are planned at α / family (what
    Holm's first step asks). A verdict without a p-value is left as it is."""
    tested = [index for index, verdict in enumerate(verdicts) if verdict.p_value is not None]
    adjusted = holm([verdicts[index].p_value for index in tested])  # type: ignore[misc]
    out = list(verdicts)
    for index, p in zip(tested, adjusted, strict=True):
        verdict = verdicts[index]
        word = _word(verdict.mean, p, confidence)
        needed = None
        if word == "not resolved" and verdict.method == "paired t" and verdict.std:
            # planned at the level the family's correction asks of its strictest test (α / family),
            # and never fewer seeds than already ran: those did not resolve it
            strict = 1 - (1 - confidence) / len(tested)
            needed = seeds_needed(verdict.mean, verdict.std, confidence=strict)
            if needed is not None:
                needed = max(needed, verdict.n + 1)
        out[index] = Verdict(
            **{
                **asdict(verdict),
                "word": word,
                "p_adjusted": p,
                "family": len(tested),
                "seeds_needed": needed if word == "not resolved" else None,
                "discordant": verdict.discordant,
                "accuracy_intervals": verdict.accuracy_intervals,
            }
        )
    return out


def from_dict(data: dict[str, Any]) -> Verdict:
    """A verdict back from ``comparison.json`` (:meth:`Verdict.as_dict`)."""
    fields = dict(data)
    if fields.get("discordant") is not None:
        fields["discordant"] = tuple(fields["discordant"])
    if fields.get("accuracy_intervals") is not None:
        fields["accuracy_intervals"] = tuple(tuple(pair) for pair in fields["accuracy_intervals"])
    return Verdict(**fields)


def _given(value: float | None) -> float:
    assert value is not None, "a tested verdict has a p-value"
    return value


def signed(value: float) -> str:
    """``+0.017``; four decimals where three would print a non-zero value as ±0.000."""
    text = f"{value:+.3f}"
    return f"{value:+.4f}" if value != 0.0 and text in ("+0.000", "-0.000") else text


def _p(value: float) -> str:
    """``p = 0.049`` (three decimals, so a value just under 0.05 does not print as 0.05); ``p < 0.001``."""
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def seeds_text(needed: int | None) -> str:
    """``about 7 seeds``; ``more than 1,000 seeds``; empty for none."""
    if needed is None:
        return ""
    if needed > MOST_SEEDS:
        return f"more than {MOST_SEEDS:,} seeds"
    return f"about {needed} seeds"


def evidence_text(verdict: Verdict) -> str:
    """The numbers behind a verdict in one parenthesis-free clause:
    ``+0.017, 95% CI −0.018 to +0.052 (paired t, 3 seeds, better in 3 of 3, p = 0.13)``."""
    if verdict.method == "none":
        return f"{signed(verdict.mean)} ({verdict.note})"
    interval = f"95% CI {signed(_given(verdict.low))} to {signed(_given(verdict.high))}"
    if verdict.method == "McNemar exact":
        assert verdict.discordant is not None and verdict.accuracy_intervals is not None
        b, c = verdict.discordant
        detail = f"one seed: McNemar exact on the test images, {b} won against {c} lost, {_p(_given(verdict.p_value))}"
    elif verdict.method == "paired bootstrap":
        detail = f"one seed: {verdict.note}, {_p(_given(verdict.p_value))}"
    else:
        detail = (
            f"paired t, {verdict.n} seeds, better in {verdict.better_in} of {verdict.n}, {_p(_given(verdict.p_value))}"
        )
    if verdict.family > 1 and verdict.p_adjusted is not None:
        detail += f"; Holm-adjusted over {verdict.family} arms: {_p(verdict.p_adjusted)}"
    return f"{signed(verdict.mean)}, {interval} ({detail})"


def word_text(verdict: Verdict) -> str:
    """The verdict's word with what it needs to be read: ``better``, ``worse``, or ``not resolved —
    about 7 seeds would resolve a difference this size at this spread (80% power)``."""
    if verdict.word != "not resolved":
        return verdict.word
    if verdict.method in ("McNemar exact", "paired bootstrap"):
        return "not resolved on these test images — run 3 or more seeds to judge the arms beyond one seed"
    if verdict.method == "none":
        return "not resolved — run 2 or more seeds"
    if verdict.mean == 0.0 and not verdict.std:
        return "not resolved — no difference at any seed"
    needed = seeds_text(verdict.seeds_needed)
    if not needed:
        return "not resolved"
    return (
        f"not resolved — {needed} would resolve a difference this size at this spread "
        f"({POWER:.0%} power; {verdict.n} so far)"
    )


def verdict_text(verdict: Verdict) -> str:
    """``better: +0.098, 95% CI +0.056 to +0.140 (paired t, 3 seeds, better in 3 of 3, p = 0.004)``."""
    return f"{word_text(verdict)}: {evidence_text(verdict)}"


__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "CONFIDENCE",
    "MOST_SEEDS",
    "POWER",
    "Verdict",
    "corrected",
    "evidence_text",
    "from_dict",
    "holm",
    "mcnemar_exact",
    "on_test_images",
    "over_seeds",
    "paired_bootstrap",
    "paired_t_interval",
    "seeds_needed",
    "seeds_text",
    "signed",
    "verdict_text",
    "wilson_interval",
    "word_text",
]
