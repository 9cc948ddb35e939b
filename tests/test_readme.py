"""The README is part of the product: its two commands are there and its example runs as written."""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import pathlib
import re

import normtx

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


# --- Install section, links and references: what a package index page shows --------------------

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: hatchling (dev extra) brings tomli
    import tomli as tomllib

ROOT = README.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REPO = "https://github.com/normtx/normtx"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _install_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", _section("Install"), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower() for req in requirements}


def test_install_section_follows_the_two_commands():
    text = README.read_text()
    assert text.index("make test") < text.index("\n## Install\n") < text.index("```python")
    assert text.index("\n## Install\n") < min(
        text.index(h) for h in re.findall(r"\n## [^\n]+\n", text) if h != "\n## Install\n"
    )


def test_install_commands_from_a_checkout_and_from_git():
    assert _install_commands() == [
        "pip install .",
        'pip install ".[notebooks]"',
        f'pip install "normtx[notebooks] @ git+{REPO}"',
    ]


def test_install_claims_match_pyproject():
    section = _section("Install")
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    assert set(re.findall(r"`(\w+)`", section.split("The extras are", 1)[1])) >= set(extras)
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    comments = [line.split("#", 1)[1] for line in block.strip().splitlines()]
    # "from a checkout: normtx with jax, optax, chex, flax, numpy and typing_extensions"
    core = set(re.findall(r"[a-z_]+", comments[0].split(" with ", 1)[1])) - {"and"}
    assert core == _requirement_names(project["dependencies"])
    # "and what the notebooks use (scikit-learn, matplotlib, tqdm, ipykernel)"
    named = set(re.findall(r"[a-z-]+", comments[1].split("(", 1)[1]))
    assert named <= _requirement_names(extras["notebooks"])
    versions = re.search(r"Python (3\.\d+) to (3\.\d+)\.", section).groups()
    assert project["requires-python"] == f">={versions[0]}"
    minors = [c.rsplit(":: ", 1)[1] for c in project["classifiers"] if re.search(r":: 3\.\d+$", c)]
    assert (minors[0], minors[-1]) == versions
    docs = _requirement_names(extras["docs"])
    assert {"sphinx", "furo"} <= docs <= _requirement_names(extras["dev"])


def test_api_docs_link_and_make_docs():
    section = _section("Install")
    url = PYPROJECT["project"]["urls"]["Documentation"]
    assert f"]({url})" in section
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^docs: .*\n\t.*sphinx -b html -W .*docs docs/_build/html$", makefile, re.M)
    assert "`make docs` builds it\ninto `docs/_build/html`" in section
    assert re.search(r"pip install --quiet -e '\.\[dev\]'", makefile)  # what `make test` installs


def test_notebooks_install_the_way_the_readme_says():
    import nbformat

    command = _install_commands()[-1]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        first = next(cell for cell in notebook.cells if cell.cell_type == "code").source
        repo_url = re.search(r'^REPO_URL = "([^"]+)"$', first, re.M).group(1)
        spec = re.search(r'f"(normtx[^"]*)"', first).group(1).replace("{REPO_URL}", repo_url)
        assert '"-m", "pip", "install"' in first, path.name
        assert command == f'pip install "{spec}"', path.name


def test_links_are_absolute_and_repository_links_exist():
    text = README.read_text()
    links = LINK.findall(text)
    assert links
    for url in links:
        assert url.startswith("https://"), f"relative link {url!r} breaks on a package index page"
        match = re.match(rf"{REPO}/(?:blob|raw)/main/(.+)$", url)
        if match:
            assert (ROOT / match.group(1)).is_file(), f"{url} names no file of the repository"
    assert re.search(rf"\]\({REPO}/(?:blob|raw)/main/", text)


def test_references_cite_papers_not_local_files():
    text = README.read_text()
    assert "../shared" not in text
    assert "seeds/" not in text
    references = _section("References")
    assert "[arXiv:2409.20325](https://arxiv.org/abs/2409.20325)" in references
    assert "*Old Optimizer, New Norm: An Anthology*" in references
    assert "*Adaptive Learning Methods*" in references


# --- The optimizers' claims: each names what a test checks --------------------------------------


def test_muon_parity_settings_are_the_tested_ones():
    """The README's recipe for optax.contrib.muon is the one tests/test_optimizers_muon.py runs
    (50 steps of a Flax transformer, and each knob against optax)."""
    import test_optimizers_muon

    row = next(line for line in README.read_text().splitlines() if line.startswith("| `muon("))
    recipe = re.search(
        r"`muon\(lr, ([^)]*)\)` is `optax\.contrib\.muon\(lr, muon_weight_dimension_numbers="
        r"normtx\.roles\.muon_dimension_numbers\(params\)\)`",
        row,
    )
    assert recipe, row
    assert eval(f"dict({recipe.group(1)})") == test_optimizers_muon.AS_OPTAX
    for knob in ("consistent_rms", "adaptive", "normalization"):
        assert knob in row
        assert knob in inspect.signature(normtx.optimizers.muon).parameters


def test_inject_hyperparams_without_static_args_as_written():
    """The README's call, as written; tests/test_hyperparams.py checks every optimizer so."""
    import jax
    import jax.numpy as jnp
    import optax

    section = " ".join(_section("Optimizers").split())
    code = re.search(r"with no `static_args`: `([^`]+)`", section).group(1)
    tx = eval(code, {"optax": optax, "normtx": normtx})
    params = {"Dense_0": {"kernel": jnp.ones((4, 6))}, "head": {"kernel": jnp.ones((6, 2))}}
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(params, state, params)
    assert "ns_steps" in state.hyperparams  # injected, and read at run time
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_weight_decay_mask_mu_dtype_frozen_and_step_claims():
    section = " ".join(_section("Optimizers").split())
    assert "`weight_decay_mask`" in section
    assert "`mu_dtype`" in section
    for name in normtx.optimizers.__all__:
        factory = getattr(normtx.optimizers, name)
        if not inspect.isfunction(factory):
            continue
        params = inspect.signature(factory).parameters
        if "weight_decay" in params:
            assert ("mask" if name == "soap" else "weight_decay_mask") in params, name
        if name in {"sign_descent", "normalized_sgd", "spectral_descent", "modular_descent"} | {
            "scion",
            "muon",
            "normuon",
            "adamuon",
        }:
            assert "mu_dtype" in params, name
    assert "(`labels={'embed': 'frozen'}`)" in section
    assert normtx.roles.FROZEN == "frozen"
    steps = re.search(
        r"`modular_descent` takes the unit step \(`step='(\w+)'`\) by default and "
        r"`modular_norm_partition` the Prop\. 7 step \(`step='(\w+)'`\)",
        section,
    )
    assert steps
    defaults = (
        inspect.signature(normtx.optimizers.modular_descent).parameters["step"].default,
        inspect.signature(normtx.modular_norm_partition).parameters["step"].default,
    )
    assert steps.groups() == defaults


def test_roles_export_claims():
    text = README.read_text()
    start = text.index("\n### Roles: the modular norm of a whole network\n")
    section = " ".join(text[start : text.index("\n## ", start)].split())
    for name in ("optax_labels", "muon_dimension_numbers"):
        assert f"`normtx.roles.{name}(params)`" in section
        assert name in normtx.roles.__all__


def test_escape_velocity_init_lr_claims():
    """The README's default is modular_descent's, and its numbers are bench_warmup's."""
    import json

    import jax.numpy as jnp
    import optax

    text = " ".join(README.read_text().split())
    claim = re.search(
        r"`modular_descent\(escape_velocity=True\)` starts its step size at `init_lr = ([0-9.e-]+)`",
        text,
    )
    assert claim
    tx = normtx.optimizers.modular_descent(1.0, escape_velocity=True)
    params = {"Dense_0": {"kernel": jnp.ones((3, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
    eta = optax.tree_utils.tree_get(tx.init(params), "eta")
    assert float(eta) == float(claim.group(1))
    numbers = re.search(
        r"from `([0-9.e-]+)`, 100 steps of the transformer end at ([0-9.]+) against ([0-9.]+) "
        r"from `([0-9.e-]+)`",
        text,
    )
    rows = json.loads((ROOT / "benchmarks" / "results" / "warmup.json").read_text())["rows"]
    val = {r["init_lr"]: r["val_loss"] for r in rows if r["task"] == "charlm" and r["steps"] == 100}
    new, new_loss, old_loss, old = numbers.groups()
    assert f"{val[float(new)]:.3f}" == new_loss
    assert f"{val[float(old)]:.3f}" == old_loss
