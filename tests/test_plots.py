"""Axis helpers: log axes read as plain numbers whatever range the metric spans."""
import matplotlib.pyplot as plt
import pytest

from disback.plots import log_axis, ratio_axis, schedule_panel, share_axis


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


def _texts(labels):
    return [t.get_text() for t in labels if t.get_text()]


def test_ratio_axis_on_y_reads_plain_numbers():
    """The threshold sweep's and the schedule figure's speed-up axes: 0.2, 0.5, 1, 2, 5, never 10^x."""
    fig, ax = plt.subplots()
    ax.plot([1, 2], [0.3, 3])
    ratio_axis(ax, "speed-up", axis="y")
    ax.set_ylim(0.1, 10)
    fig.canvas.draw()
    major, minor = _texts(ax.get_yticklabels()), _texts(ax.get_yticklabels(minor=True))
    assert {"0.2", "0.5", "1", "2", "5"} <= set(major) and not minor, (major, minor)
    assert not any("^" in t or "$" in t or "e" in t for t in major)
    assert ax.get_ylabel() == "speed-up"
    plt.close(fig)


def test_share_axis_labels_each_share_once_in_percent():
    """The schedule figure's x axis: one percent label per share and no minor labels to overlap them."""
    fig, ax = plt.subplots()
    shares = [0.05, 0.1, 0.2, 0.5]
    ax.plot(shares, [1, 2, 3, 4])
    share_axis(ax, shares)
    fig.canvas.draw()
    assert _texts(ax.get_xticklabels()) == ["5%", "10%", "20%", "50%"]
    assert _texts(ax.get_xticklabels(minor=True)) == []
    plt.close(fig)


def test_schedule_panel_has_plain_speedup_and_share_labels():
    """Notebook 05's panel: control band, one curve per node count, readable labels on both axes."""
    def s(r):
        return {"ratio": r, "ci_low": r / 1.5, "ci_high": r * 1.5}

    entries = [{"method": "dmd", "group": "control", "speedup_updates": s(1.2)}]
    entries += [{"method": "dmd", "group": f"N={n}", "share": share, "speedup_updates": s(0.5 + share)}
                for n in (2, 4) for share in (0.05, 0.2)]
    fig, ax = plt.subplots()
    schedule_panel(ax, entries, "dmd", "speedup_updates", [2, 4], [0.05, 0.2])
    fig.canvas.draw()
    assert _texts(ax.get_xticklabels()) == ["5%", "20%"] and not _texts(ax.get_xticklabels(minor=True))
    assert {"0.2", "0.5", "1", "2", "5"} <= set(_texts(ax.get_yticklabels()))
    assert not _texts(ax.get_yticklabels(minor=True))
    assert len(ax.get_legend().get_texts()) == 3
    plt.close(fig)


def test_notebooks_set_log_axes_through_the_plain_number_helpers():
    """A log axis in a notebook goes through ``log_axis``/``ratio_axis``/``share_axis`` (plain tick labels), never
    matplotlib's own log scale, whose labels read 10^x."""
    import json
    import re
    from pathlib import Path

    raw_log = re.compile(r"loglog\(|semilog[xy]\(|[xy]scale\s*=\s*[\"']log|set_[xy]scale\(")
    for nb in sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            source = "".join(cell["source"])
            assert not raw_log.search(source), f"{nb.name}: a raw log axis; use plots.log_axis (plain numbers)"


def test_node_shading_labels_only_spans_they_fit():
    """Short spans side by side used to print "node k" on top of each other: narrow spans get a short label or none."""
    from disback.path import TargetSchedule
    from disback.plots import node_label, shade_nodes

    assert node_label(3, 0.6) == "node 3" and node_label(3, 0.2) == "3" and node_label(3, 0.05) == ""
    fig, ax = plt.subplots(figsize=(6, 3))
    shade_nodes(ax, TargetSchedule.backtracking(4, 2, 100), 100)  # three nodes of 2 updates each in 100
    assert [t.get_text() for t in ax.texts] == []
    shade_nodes(ax, TargetSchedule.backtracking(3, 30, 100), 100)
    assert [t.get_text() for t in ax.texts] == ["node 2", "node 1"]
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(6, 3))  # the same spans on a third of the width: short labels
    shade_nodes(axes[0], TargetSchedule.backtracking(3, 30, 100), 100)
    assert [t.get_text() for t in axes[0].texts] == ["2", "1"]
    plt.close(fig)
