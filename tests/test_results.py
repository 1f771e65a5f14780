"""Writing results: the number format tables and REPORT.md share, CSV + Markdown tables."""
import csv

import pytest

from disback.results import fmt_number, markdown_table, save_table


@pytest.mark.parametrize("value, text", [(0.123456, "0.1235"), (12345.6, "1.235e+04"), (2.0, "2"), (3, "3"),
                                         ("DisBack", "DisBack"), (None, "None")])
def test_fmt_number_gives_floats_four_significant_digits(value, text):
    assert fmt_number(value) == text


def test_save_table_writes_csv_and_markdown(tmp_path):
    rows = [{"arm": "baseline", "w2": 0.123456}, {"arm": "DisBack", "w2": 0.05}]
    csv_file, md_file = save_table(rows, tmp_path / "t" / "table")
    assert [r["w2"] for r in csv.DictReader(open(csv_file))] == ["0.123456", "0.05"]
    assert md_file.read_text() == markdown_table(rows) == ("| arm | w2 |\n|---|---|\n| baseline | 0.1235 |\n"
                                                           "| DisBack | 0.05 |\n")
    with pytest.raises(ValueError, match="rows is empty"):
        save_table([], tmp_path / "empty")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def test_every_committed_csv_loads_as_numbers():
    """Each committed results CSV loads with the csv module; a column is either all labels or all numbers (empty
    cells aside), so nobody has to parse "0.12 ± 0.01" to analyse our results."""
    from pathlib import Path

    tables = sorted((Path(__file__).resolve().parents[1] / "results" / "cpu" / "tables").glob("*.csv"))
    assert tables, "no committed results/cpu/tables/*.csv"
    for f in tables:
        rows = list(csv.DictReader(open(f)))
        assert rows, f.name
        for col in rows[0]:
            cells = [r[col] for r in rows if r[col] not in ("", "None")]
            assert not any("±" in c for c in cells), f"{f.name}:{col} holds pre-formatted text"
            if any(_is_number(c) for c in cells) and not all(c in ("True", "False") for c in cells):
                bad = [c for c in cells if not _is_number(c)]
                assert not bad, f"{f.name}:{col} mixes numbers with {bad[:3]}"


def test_save_table_leaves_missing_and_none_cells_empty_in_csv(tmp_path):
    csv_file, _ = save_table([{"arm": "baseline", "share": None}, {"arm": "DisBack", "share": 0.1, "n": 5}],
                             tmp_path / "t")
    rows = list(csv.DictReader(open(csv_file)))
    assert [r["share"] for r in rows] == ["", "0.1"] and [r["n"] for r in rows] == ["", "5"]
