"""Report figures read at 4 to 8 arms: the rendered labels of the time-to-target chart (and the tick
labels and values around it) keep apart, measured from the drawn figure's text boxes."""

from __future__ import annotations

import itertools

import pytest

from headstart.report import figures

NAMES = [
    "scratch",
    "scratch → FixMatch",
    "SimCLR → task",
    "SimCLR → task → FixMatch",
    "BYOL → task",
    "DINO → task",
    "rotation → task",
    "ImageNet → task",
]


def _budget(arms: int) -> dict:
    """A budget table as :func:`headstart.report.summary.summarise` writes it, with similar times
    (the case where labels of neighbouring arms collided) and one arm that never reached the target."""

    def spread(values):
        mean = sum(values) / len(values)
        return {"mean": mean, "std": 0.1 * mean, "n": len(values), "values": values}

    rows = []
    for index, name in enumerate(NAMES[:arms]):
        reached = 0 if index == 3 else 3
        rows.append(
            {
                "name": name,
                "seeds": [0, 1, 2],
                "test_accuracy": spread([0.88 + 0.01 * index, 0.9, 0.91]),
                "reached": reached,
                "seconds_to_target": spread([50.0 + 3 * index] * 3)
                if reached
                else {"mean": None, "std": None, "n": 0, "values": []},
                "full_steps_to_target": spread([1200.0 + 10 * index] * 3),
                "cached_steps_to_target": spread([300.0] * 3),
            }
        )
    return {"target_val_accuracy": 0.874, "baseline": "scratch", "arms": rows}


@pytest.fixture
def drawn(monkeypatch):
    """The figures as drawn for the PNG (laid out and rendered at the report's DPI), kept open."""
    kept = []

    def keep(figure, *, dpi=100):
        figure.set_dpi(dpi)
        figure.tight_layout()
        figure.canvas.draw()
        kept.append(figure)
        return b""

    monkeypatch.setattr(figures, "png_bytes", keep)
    yield kept
    import matplotlib.pyplot as plt

    for figure in kept:
        plt.close(figure)


def _boxes(texts, renderer):
    return [(text.get_text(), text.get_window_extent(renderer)) for text in texts if text.get_text().strip()]


def _overlapping(boxes):
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


@pytest.mark.parametrize("arms", [4, 5, 6, 7, 8])
def test_time_to_target_labels_do_not_overlap(drawn, arms):
    figures.accuracy_and_time(_budget(arms))
    (figure,) = drawn
    renderer = figure.canvas.get_renderer()
    (timing,) = [axes for axes in figure.axes if axes.get_title().startswith("time to converge")]
    (accuracy,) = [axes for axes in figure.axes if axes is not timing]
    steps = _boxes(timing.texts, renderer)
    assert len(steps) == arms and any("never reached" in text for text, _ in steps)
    assert any("1210 full + 300 cached" in " ".join(text.split()) for text, _ in steps)
    values = _boxes(accuracy.texts, renderer)  # the mean test accuracy of each arm
    ticks = [label for axes in figure.axes for label in axes.get_xticklabels() + axes.get_yticklabels()]
    names = [(text, box) for text, box in _boxes(ticks, renderer) if text in NAMES]  # where the arms are named
    assert {text for text, _ in names} == set(NAMES[:arms])
    titles = _boxes([accuracy.title, timing.title], renderer)
    assert _overlapping(steps + values + names + titles) == []
    page = figure.bbox
    for text, box in steps + values + names:  # inside the picture, not cut at its edge
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, text
    for axes, shown in ((timing, steps), (accuracy, values)):  # and inside their own chart
        frame = axes.get_window_extent(renderer)
        assert all(frame.x0 <= box.x0 and box.x1 <= frame.x1 for _, box in shown)


def test_accuracy_against_labels_per_class_draws_a_line_and_a_band_per_arm():
    """One line through the means and a ± std band per arm, ticked at the budgets; an arm missing
    at a budget is drawn through the budgets it has."""

    def arm(name, mean, std):
        return {"name": name, "test_accuracy": {"mean": mean, "std": std, "n": 3, "values": [mean] * 3}}

    levels = {1: 0.30, 2: 0.45, 4: 0.62, 10: 0.88}
    summary = {
        "arms": ["scratch", "rotation → FixMatch"],
        "budgets": [
            {
                "labels_per_class": count,
                "arms": [arm("scratch", level, 0.02)]
                + ([arm("rotation → FixMatch", level + 0.1, 0.01)] if count > 1 else []),
            }
            for count, level in levels.items()
        ],
    }
    figure = figures.budgets_figure(summary)
    (axes,) = figure.axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert list(lines) == ["scratch (n=3)", "rotation → FixMatch (n=3)"]
    assert list(lines["scratch (n=3)"].get_xdata()) == [1, 2, 4, 10]
    assert list(lines["scratch (n=3)"].get_ydata()) == pytest.approx(list(levels.values()))
    assert list(lines["rotation → FixMatch (n=3)"].get_xdata()) == [2, 4, 10]
    bands = axes.collections
    assert len(bands) == 2
    low, high = bands[0].get_paths()[0].vertices[:, 1].min(), bands[0].get_paths()[0].vertices[:, 1].max()
    assert low == pytest.approx(0.28) and high == pytest.approx(0.90)
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["1", "2", "4", "10"]
    assert figures.budgets(summary)[:8] == b"\x89PNG\r\n\x1a\n"
