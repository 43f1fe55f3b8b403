"""The report's "Where the families meet" section on the real model: a quick report with two
cheap analyzers (previous_token, induction; no causal checks) has the section, its heatmap
(on the page and as a figure file) and a pair table whose numbers are those of
:func:`workbench.analyzers.agreement` recomputed from the report's own ``heads.parquet``."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from workbench.analyzers import agreement
from workbench.cli import main
from workbench.report.render import find_chromium

pytestmark = pytest.mark.model

ANALYZERS = ("previous_token", "induction")
K = 10  # the report's top-k of the section: its top-heads tables' length


class _Tables(HTMLParser):
    """The cells of every ``<table>`` whose class includes a given name, row by row."""

    def __init__(self, cls: str) -> None:
        super().__init__()
        self.cls, self.rows, self.inside, self.cell = cls, [], False, None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and self.cls in (dict(attrs).get("class") or "").split():
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def table_of(page: str, cls: str) -> pd.DataFrame:
    parser = _Tables(cls)
    parser.feed(page)
    header, *rows = parser.rows
    return pd.DataFrame(rows, columns=header)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("agreement") / "report"
    figures = "png" if find_chromium() else "none"
    args = ["report", "--analyzers", ",".join(ANALYZERS), "--quick", "--no-causal"]
    args += ["--examples", "0", "--figures", figures, "--quiet", "--out", str(out)]
    assert main(args) == 0
    return out


def recomputed(report: Path):
    """agreement() on the families' scores as the report stored them in heads.parquet."""
    heads = pd.read_parquet(report / "heads.parquet")
    frames = {}
    for name in ANALYZERS:
        df = heads[["layer", "head", "head_id"]].copy()
        df["score"] = heads[f"{name}.score"].to_numpy()
        frames[name] = df
    return agreement(frames, k=K)


def test_section_and_figure_exist(report):
    page = (report / "report.html").read_text()
    assert "<h2 id='agreement'>Where the families meet</h2>" in page
    assert 'id="agreement-0"' in page  # the plotly div of the heatmaps
    summary = json.loads((report / "summary.json").read_text())
    if "written" in summary["figures"]:
        assert "agreement.png" in summary["figures"]["written"]
        assert (report / "figures" / "agreement.png").stat().st_size > 0


def test_numbers_equal_agreement_on_heads_parquet(report):
    page = (report / "report.html").read_text()
    shown = table_of(page, "agreement-pairs")
    expected = recomputed(report).pairs
    assert len(shown) == len(expected) == 1
    row, want = shown.iloc[0], expected.iloc[0]
    assert (row.family_a, row.family_b) == ("previous_token", "induction")
    for col in ("top_a", "top_b", "overlap", "n_heads"):
        assert int(row[col]) == int(want[col]), col
    assert row.shared == want.shared
    for col in ("jaccard", "spearman", "p_value"):  # the page writes 4 significant digits
        assert float(row[col]) == pytest.approx(float(want[col]), rel=1e-3, abs=1e-12), col
    assert int(row.n_heads) == 270
