"""``workbench bench --analyzers`` (issue 14, item 3) on its quick task: every family timed
both ways on the same prompts, and the workbench's per-head scores equal the reference rule's
(eager maps, one prompt at a time) up to float rounding. No timing assertions."""

from __future__ import annotations

import json

import pytest
import torch

from workbench import peer_rules
from workbench.bench_analyzers import (
    FAMILIES,
    analyzer_rows_as_json,
    format_analyzer_row,
    run_analyzer_bench,
)
from workbench.cli import main
from workbench.errors import WorkbenchError

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def rows(lm):
    return run_analyzer_bench(lm, quick=True, log=None)


def test_every_family_timed_both_ways_with_equal_scores(lm, rows):
    assert [r.family for r in rows] == ["sinks", "induction", "retrieval", "contextual"]
    for row in rows:
        print(format_analyzer_row(row))
        assert 1 <= row.n_prompts <= 2
        assert row.workbench_s > 0 and row.reference_s > 0 and row.forwards_s > 0
        assert "forwards alone" in format_analyzer_row(row)
        assert row.workbench_peak_mb > 0 and row.reference_peak_mb > 0
        assert row.max_abs_diff <= 1e-4, row
        assert row.nonzero_heads >= 5, row  # a comparison of all-zero scores proves nothing
    data = json.loads(json.dumps(analyzer_rows_as_json(lm, rows)))
    assert [r["family"] for r in data["analyzers"]] == list(FAMILIES)
    assert "elsewhere in 0/2 items" in rows[-1].note  # the quick items' spans agree


def test_induction_reference_rule_on_a_hand_made_map():
    """The reimplemented detect_head rule on a hand-worked case: tokens [a, b, a, b]; the
    induction pattern marks (2, 1) and (3, 2); a map putting all of row 2 on key 1 and
    half of row 3 on key 2 scores (0 + 0 + 1 + 0.5) / 4 rows of mass 1 = 0.375."""
    pattern = peer_rules.induction_detection_pattern(torch.tensor([[5, 7, 5, 7]]))
    want = torch.zeros(4, 4)
    want[2, 1] = want[3, 2] = 1
    assert torch.equal(pattern, want)
    attn = torch.tensor(
        [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 1, 0, 0], [0.25, 0, 0.5, 0.25]], dtype=torch.float32
    )
    score = peer_rules.classic.similarity_score(
        attn, pattern, exclude_bos=False, exclude_current_token=False
    )
    assert score == pytest.approx(0.375)
    # excluding BOS removes 1 + 0.5 + 0.25 of mass: 1.5 / 2.25
    score = peer_rules.classic.similarity_score(
        attn, pattern, exclude_bos=True, exclude_current_token=False
    )
    assert score == pytest.approx(1.5 / 2.25)


def test_peer_rules_stay_independent_of_the_analyzers():
    import ast
    from pathlib import Path

    for path in Path(peer_rules.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if m.startswith("workbench.analyzers")], path


def test_bench_cli_rejects_quick_without_analyzers_and_load_with_them(capsys):
    assert main(["bench", "--quick"]) != 0
    assert "--quick" in capsys.readouterr().err
    assert main(["bench", "--analyzers", "--load", "1"]) != 0
    assert "--load 1" in capsys.readouterr().err


def test_unknown_family_is_refused(lm):
    with pytest.raises(WorkbenchError, match="choose from"):
        run_analyzer_bench(lm, families=["sink"], log=None)
