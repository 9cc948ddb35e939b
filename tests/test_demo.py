"""``make demo`` runs end to end (``--quick``) and writes its table, JSON and plot."""

from __future__ import annotations

import json
import math

from examples import demo


def test_demo_quick_writes_outputs(tmp_path, capsys):
    rows = demo.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    payload = json.loads((tmp_path / "demo.json").read_text())
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert [r["optimizer"] for r in payload["rows"]] == [r["optimizer"] for r in rows]
    assert len(rows) >= 2
    for row in rows:
        assert row["optimizer"] in printed
        numbers = [v for v in row.values() if isinstance(v, float)]
        assert numbers
        assert all(math.isfinite(v) for v in numbers)
    for run in payload["runs"]:
        assert run["steps"][0] == 0
        assert len(run["val"]["loss"]) == len(run["steps"])
    assert payload["environment"]["cpu_count"] >= 1
