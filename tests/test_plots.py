"""Axis helpers: log axes read as plain numbers whatever range the metric spans."""
import matplotlib.pyplot as plt
import pytest

from disback.plots import log_axis, ratio_axis


def _labels(ax, minor=False):
    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_yticklabels(minor=minor) if t.get_text()]


@pytest.mark.parametrize("lo, hi, expected", [
    (1.35, 1.76, ["1.4", "1.5", "1.6", "1.7"]),  # narrow: every minor tick labelled
    (0.2, 1.1, ["0.2", "0.5"]),                     # about a decade: 2x and 5x
    (6.0, 50.0, ["20"]),
])
def test_log_axis_labels_plain_numbers(lo, hi, expected):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [lo, hi])
    log_axis(ax)
    ax.set_ylim(lo, hi)
    minor = _labels(ax, minor=True)
    assert all(e in minor for e in expected), minor
    assert not any("e" in t or "^" in t for t in minor + _labels(ax))
    plt.close(fig)


def test_ratio_axis_has_readable_ticks_below_one():
    fig, ax = plt.subplots()
    ax.plot([0.2, 0.6], [0, 1])
    ratio_axis(ax, "speed-up")
    ax.set_xlim(0.15, 1.1)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert {"0.2", "0.5", "1"} <= set(labels), labels
    plt.close(fig)
