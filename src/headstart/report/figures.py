"""Figures of a comparison report, each drawn from the summary (:mod:`headstart.report.summary`)
and returned as PNG bytes, so the HTML report embeds them and needs no other file."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from headstart.files import png_bytes
from headstart.metrics import METRICS
from headstart.report.summary import judged_spread
from headstart.report.verdicts import metric_name

DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colours(names: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    return {name: plt.get_cmap("tab10")(index % 10) for index, name in enumerate(names)}


def learning_curves(budget: dict[str, Any]) -> bytes:
    """Validation accuracy per labelled epoch (mean ± std band over seeds) and against wall seconds
    (one line per seed; the head start shifts a curve to the right)."""
    plt = _pyplot()
    figure, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    palette = colours([arm["name"] for arm in budget["arms"]])
    for name, runs in budget["runs"].items():
        curves = [[point["val_accuracy"] for point in run["timeline"]] for run in runs]
        length = max((len(curve) for curve in curves), default=0)
        if not length:
            continue
        padded = np.full((len(curves), length), np.nan)
        for row, curve in enumerate(curves):
            padded[row, : len(curve)] = curve
        mean = np.nanmean(padded, 0)
        std = np.nanstd(padded, 0, ddof=1) if len(curves) > 1 else np.zeros(length)
        epochs = np.arange(1, length + 1)
        by_epoch.plot(epochs, mean, color=palette[name], label=f"{name} (n={len(curves)})", linewidth=1.6)
        by_epoch.fill_between(
            epochs, mean - np.nan_to_num(std), mean + np.nan_to_num(std), color=palette[name], alpha=0.2, linewidth=0
        )
        for index, run in enumerate(runs):
            by_time.plot(
                [point["seconds"] for point in run["timeline"]],
                [point["val_accuracy"] for point in run["timeline"]],
                color=palette[name],
                linewidth=1,
                alpha=0.8,
                label=name if index == 0 else None,
            )
    for axes in (by_epoch, by_time):
        if budget["target_val_accuracy"] is not None:
            axes.axhline(budget["target_val_accuracy"], color="grey", linestyle="--", linewidth=1, label="target")
        axes.set_ylabel("validation accuracy")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right", fontsize=8)
    by_epoch.set_xlabel("epoch on the labelled data")
    by_epoch.set_title("learning curves, mean ± std over seeds")
    by_time.set_xlabel("wall seconds from the start of the run (head start included)")
    by_time.set_title("against wall time, each seed")
    return png_bytes(figure, dpi=DPI)


def accuracy_and_time(budget: dict[str, Any]) -> bytes:
    """Test accuracy per arm (mean ± std, each seed a dot) and seconds to the target."""
    return png_bytes(accuracy_and_time_figure(budget), dpi=DPI)


def _step_label(arm: dict[str, Any]) -> str:
    seeds = len(arm["seeds"])
    if not arm["reached"]:
        return f"0/{seeds} seeds: never reached"
    return (
        f"{arm['reached']}/{seeds} seeds: {arm['full_steps_to_target']['mean']:.0f} full"
        f" + {arm['cached_steps_to_target']['mean']:.0f} cached steps"
    )


def _room_on_the_right(axes: Any, labels: list[Any], anchors: list[float], left: float = 0.0) -> None:
    """Widen the x axis of ``axes`` (from ``left``) until every label, drawn from its anchor to the
    right by a fixed number of pixels, ends inside the axes: labels at the ends of horizontal bars."""
    figure = axes.figure
    figure.tight_layout()
    renderer = figure.canvas.get_renderer()
    width = axes.get_window_extent(renderer).width
    span = max(max(anchors, default=left) - left, 0.0) or 1.0
    for label, anchor in zip(labels, anchors, strict=True):
        box = label.get_window_extent(renderer)
        needed = box.x1 - axes.transData.transform((anchor, 0))[0]  # offset + width, in pixels
        free = 0.97 * width - needed
        # a label as wide as most of the axes gets the right half of it
        span = max(span, (anchor - left) * width / free if free > 0.1 * width else 2 * (anchor - left))
    axes.set_xlim(left, left + span * 1.02)


def accuracy_and_time_figure(budget: dict[str, Any]) -> Any:
    """:func:`accuracy_and_time`'s figure: one row per arm (the first on top, as in the table), its
    name once on the left; the judging metric (test accuracy unless the comparison chose another) and
    seconds to the target as horizontal bars, each labelled at its end (the mean; the seeds that
    reached the target and the steps it took), so the labels of neighbouring arms never share a line.
    The figure grows a row's height per arm."""
    plt = _pyplot()
    arms = budget["arms"]
    names = [arm["name"] for arm in arms]
    figure, (accuracy, timing) = plt.subplots(
        1, 2, figsize=(12, max(3.8, 1.5 + 0.45 * len(arms))), sharey=True, width_ratios=(2, 3)
    )
    palette = colours(names)
    bar_colours = [palette[name] for name in names]
    rows = np.arange(len(arms))
    judged = [judged_spread(arm, budget) for arm in arms]
    means = [spread["mean"] or 0.0 for spread in judged]
    stds = [spread["std"] or 0.0 for spread in judged]
    accuracy.barh(rows, means, xerr=stds, capsize=3, height=0.6, color=bar_colours, alpha=0.85)
    tops = []
    for row, spread, mean, std in zip(rows, judged, means, stds, strict=True):
        values = spread["values"]
        accuracy.scatter(values, [row] * len(values), color="black", s=12, zorder=3)
        tops.append(max([*values, mean + std]))
    values_shown = [
        accuracy.annotate(
            f"{mean:.3f}",
            (top, row),
            ha="left",
            va="center",
            fontsize=8,
            xytext=(5, 0),
            textcoords="offset points",
        )
        for row, mean, top in zip(rows, means, tops, strict=True)
    ]
    accuracy.set_yticks(rows, names)
    accuracy.set_ylim(len(arms) - 0.5, -0.5)  # the first arm on top, as in the table
    accuracy.set_xlabel(f"test {metric_name(budget)}")
    accuracy.set_title("final metric (bars: mean ± std; dots: seeds)")
    accuracy.grid(axis="x", alpha=0.3)
    times = [arm["seconds_to_target"]["mean"] or 0.0 for arm in arms]
    spreads = [arm["seconds_to_target"]["std"] or 0.0 for arm in arms]
    timing.barh(rows, times, xerr=spreads, capsize=3, height=0.6, color=bar_colours, alpha=0.85)
    ends = [time + spread for time, spread in zip(times, spreads, strict=True)]
    steps_shown = [
        timing.annotate(
            _step_label(arm), (end, row), ha="left", va="center", fontsize=8, xytext=(5, 0), textcoords="offset points"
        )
        for row, arm, end in zip(rows, arms, ends, strict=True)
    ]
    timing.tick_params(axis="y", left=False)
    timing.set_xlabel("wall seconds to the target")
    target = budget["target_val_accuracy"]
    timing.set_title("time to converge" + (f" (validation accuracy {target:.3f})" if target is not None else ""))
    timing.grid(axis="x", alpha=0.3)
    low = min(min(spread["values"], default=1.0) for spread in judged)
    _room_on_the_right(accuracy, values_shown, tops, left=max(0.0, low - 0.1))
    _room_on_the_right(timing, steps_shown, ends)
    return figure


def confusion(matrix: list[list[int]], labels: list[str], title: str) -> bytes:
    """Row-normalised confusion matrix with counts in each cell."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 20:
        for row in range(len(labels)):
            for column in range(len(labels)):
                if counts[row, column]:
                    axes.text(
                        column,
                        row,
                        f"{int(counts[row, column])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rates[row, column] > 0.5 else "black",
                    )
        axes.set_xticks(range(len(labels)), labels, rotation=90 if max(map(len, labels)) > 3 else 0)
        axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    return png_bytes(figure, dpi=DPI)


def schedules(runs: list[dict[str, Any]], arm: str) -> bytes:
    """The learning rate at every planned step of each stage of one run, stages side by side."""
    plt = _pyplot()
    run = runs[0]
    figure, axes = plt.subplots(figsize=(11, 2.6))
    offset = 0
    palette = colours([stage["name"] for stage in run["stages"]])
    for stage in run["stages"]:
        rates = stage["learning_rates"]
        steps = np.arange(offset, offset + len(rates))
        axes.plot(
            steps,
            rates,
            color=palette[stage["name"]],
            label=stage["name"] + (" (cached features)" if stage["cached_features"] else ""),
        )
        offset += len(rates)
        axes.axvline(offset, color="grey", linewidth=0.6, linestyle=":")
    axes.set_xlabel("optimizer step (stages in order)")
    axes.set_ylabel("learning rate")
    axes.set_yscale("log")
    axes.set_title(f"{arm}: learning-rate schedule of each stage (seed {run['seed']})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    return png_bytes(figure, dpi=DPI)


def unlabelled_used(budget: dict[str, Any]) -> bytes | None:
    """Share of unlabelled images above the pseudo-label threshold per epoch of every semi-supervised
    stage (mean over seeds, band = min..max), beside its validation accuracy; ``None`` when no arm has one."""
    series = []
    for arm, runs in budget["runs"].items():
        for index, stage in enumerate(runs[0]["stages"]):
            if stage.get("unlabelled_used"):
                used = [run["stages"][index].get("unlabelled_used") or [] for run in runs]
                accuracy = [
                    [point["val_accuracy"] for point in run["timeline"] if point["stage"] == stage["name"]]
                    for run in runs
                ]
                series.append((f"{arm} / {stage['name']}", used, accuracy))
    if not series:
        return None
    plt = _pyplot()
    figure, (share, validation) = plt.subplots(1, 2, figsize=(11, 3.6))
    palette = colours([label for label, _, _ in series])
    for label, used, accuracy in series:
        for axes, values in ((share, used), (validation, accuracy)):
            length = min(len(v) for v in values)
            if not length:
                continue
            table = np.array([v[:length] for v in values])
            epochs = np.arange(1, length + 1)
            axes.plot(epochs, table.mean(0), color=palette[label], label=label)
            axes.fill_between(epochs, table.min(0), table.max(0), color=palette[label], alpha=0.2)
    share.set_ylim(0, 1)
    share.set_ylabel("share used")
    validation.set_ylabel("validation accuracy")
    for axes in (share, validation):
        axes.set_xlabel("epoch of the semi-supervised stage")
        axes.grid(alpha=0.3)
    share.legend(fontsize=8, loc="lower right")
    share.set_title("unlabelled images above the threshold")
    validation.set_title("validation accuracy (mean, band = min..max over seeds)")
    return png_bytes(figure, dpi=DPI)


def attention(npz: Any) -> bytes:
    """Input images in the first column, then each arm's maps per layer (Gidaris et al. 2018, fig. 3)."""
    plt = _pyplot()
    meta = json.loads(str(npz["meta"]))
    images = npz["images"]
    maps = meta["maps"]
    rows, columns = len(images), 1 + len(maps)
    figure, axes = plt.subplots(rows, columns, figsize=(1.45 * columns + 0.5, 1.55 * rows + 0.9), squeeze=False)
    for row in range(rows):
        picture = images[row].transpose(1, 2, 0)
        axes[row, 0].imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(meta["labels"][row] if row < len(meta["labels"]) else "", fontsize=8)
        for column, entry in enumerate(maps, start=1):
            axes[row, column].imshow(npz[entry["key"]][row], cmap="jet", vmin=0, vmax=1, interpolation="bilinear")
    axes[0, 0].set_title("input", fontsize=8)
    for column, entry in enumerate(maps, start=1):
        height, width = entry["shape"]
        axes[0, column].set_title(
            f"{entry['arm']}\n{entry['layer'].removeprefix('backbone.')} ({height}×{width})", fontsize=7
        )
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(
        f"attention maps: mean over channels of |activation|^{meta['power']:g}, each arm's final network", fontsize=9
    )
    return png_bytes(figure, dpi=DPI)


def budgets(summary: dict[str, Any]) -> bytes:
    """:func:`budgets_figure` as PNG bytes."""
    return png_bytes(budgets_figure(summary), dpi=DPI)


def budgets_figure(summary: dict[str, Any]) -> Any:
    """The judging metric (test accuracy unless the comparison chose another) against labels per class:
    one line per arm through the means over seeds, a band of ± one std, on a log axis ticked at the
    budgets (where a head start matters most: the left)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    palette = colours(summary["arms"])
    ticks: set[int] = set()
    for name in summary["arms"]:
        points = sorted(
            (budget["labels_per_class"], judged_spread(arm, budget))
            for budget in summary["budgets"]
            for arm in budget["arms"]
            if arm["name"] == name and judged_spread(arm, budget)["mean"] is not None
        )
        if not points:
            continue
        xs = np.array([x for x, _ in points], dtype=float)
        means = np.array([p["mean"] for _, p in points])
        stds = np.array([p["std"] or 0.0 for _, p in points])
        ticks.update(int(x) for x in xs)
        seeds = max(p["n"] for _, p in points)
        axes.plot(xs, means, marker="o", color=palette[name], label=f"{name} (n={seeds})", linewidth=1.6)
        axes.fill_between(xs, means - stds, means + stds, color=palette[name], alpha=0.18, linewidth=0)
    axes.set_xscale("log")
    axes.set_xticks(sorted(ticks))
    axes.set_xticklabels([str(tick) for tick in sorted(ticks)])
    axes.minorticks_off()
    axes.set_xlabel("labels per class")
    metric = METRICS[summary.get("metric") or "accuracy"]
    axes.set_ylabel(f"test {metric}")
    axes.set_title(f"{metric} against labels per class (mean ± std over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return figure


WORD_COLOURS = {"better": "#2e7d32", "worse": "#c0392b", "not resolved": "#b07d00"}
"""Marker colour of each verdict word in the forest plot (the report's verdict boxes use the same)."""


def forest(rows: list[dict[str, Any]], labels_per_class: int | None = None) -> bytes:
    """:func:`forest_figure` as PNG bytes."""
    return png_bytes(forest_figure(rows, labels_per_class), dpi=DPI)


def forest_figure(rows: list[dict[str, Any]], labels_per_class: int | None = None) -> Any:
    """A forest plot of a budget's paired comparisons (:func:`headstart.report.verdicts.effects`): each
    as its mean difference in test accuracy (or the verdicts' metric) with its 95% interval, against a
    zero line; the marker's colour is the verdict (better, worse, not resolved). An effect whose
    interval crosses the line is not resolved; one wholly right of it is better."""
    plt = _pyplot()
    height = 1.2 + 0.42 * len(rows)
    figure, axes = plt.subplots(figsize=(8.5, height))
    positions = np.arange(len(rows))[::-1]
    for position, row in zip(positions, rows, strict=True):
        verdict = row["verdict"]
        colour = WORD_COLOURS.get(verdict["word"], "#555555")
        if verdict["low"] is not None and verdict["high"] is not None:
            axes.plot([verdict["low"], verdict["high"]], [position, position], color=colour, linewidth=2.2)
            for end in (verdict["low"], verdict["high"]):
                axes.plot([end, end], [position - 0.15, position + 0.15], color=colour, linewidth=1.4)
        marker = "s" if row["kind"] == "baseline" else "D" if row["kind"] == "step" else "o"
        axes.plot(verdict["mean"], position, marker=marker, color=colour, markersize=7, zorder=3)
        detail = (
            f"{verdict['word']}, {verdict['better_in']}/{verdict['n']}"
            if verdict["method"] == "paired t"
            else (
                f"{verdict['word']}, McNemar"
                if verdict["method"] == "McNemar exact"
                else f"{verdict['word']}, bootstrap"
                if verdict["method"] == "paired bootstrap"
                else verdict["word"]
            )
        )
        axes.annotate(
            detail,
            (1.0, position),
            xycoords=("axes fraction", "data"),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=colour,
        )
    axes.axvline(0.0, color="#333333", linewidth=1.0)
    axes.set_yticks(positions)
    axes.set_yticklabels([row["label"] for row in rows], fontsize=8.5)
    axes.set_ylim(-0.7, len(rows) - 0.3)
    metric = METRICS[(rows[0]["verdict"].get("metric") if rows else None) or "accuracy"]
    axes.set_xlabel(f"difference in test {metric} (paired by seed), 95% interval")
    where = f" — {labels_per_class} label{'s' if labels_per_class != 1 else ''} per class" if labels_per_class else ""
    axes.set_title(f"effects{where}", fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    figure.subplots_adjust(right=0.8)
    figure.tight_layout(rect=(0, 0, 0.86, 1))
    return figure
