"""``make demo`` runs end to end (``--quick``) and writes its table, samples, JSON and plot."""

from __future__ import annotations

import json
import math

import pytest

from examples import demo

pytestmark = pytest.mark.slow


def test_demo_quick_writes_outputs(tmp_path, capsys):
    rows = demo.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    payload = json.loads((tmp_path / "demo.json").read_text())
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert [r["optimizer"] for r in payload["rows"]] == [r["optimizer"] for r in rows]
    assert len(rows) == 2
    for row in rows:
        assert row["optimizer"] in printed
        numbers = [v for v in row.values() if isinstance(v, float)]
        assert len(numbers) == 5
        assert all(math.isfinite(v) for v in numbers)
    for name, texts in payload["samples"].items():
        assert len(texts) == len(demo.PROMPTS)
        for prompt, text in zip(demo.PROMPTS, texts):
            assert text.startswith(prompt)
            assert len(text) == len(prompt) + demo.QUICK["sample_chars"]
        assert f"samples: {name}" in printed
    for run in payload["runs"]:
        assert run["steps"] == list(range(0, demo.QUICK["steps"] + 1, demo.QUICK["eval_every"]))
        assert len(run["val"]["loss"]) == len(run["steps"])
    assert len(payload["task"]["corpus_sha256"]) == 64
