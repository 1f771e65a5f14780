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
