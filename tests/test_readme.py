"""The README is part of the product: its two commands are there and its example runs as written."""

from __future__ import annotations

import contextlib
import io
import math
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_first_screen_gives_exactly_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert text.index("make demo") < text.index("```python")


def test_readme_example_runs_as_written_and_trains():
    blocks = _python_blocks(README.read_text())
    assert blocks, "README has no python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), {"__name__": "__readme__"})
    final = float(re.search(r"final loss ([0-9.]+)", out.getvalue()).group(1))
    assert final < 0.5 * math.log(10)  # far below the loss of a uniform guess over 10 classes
