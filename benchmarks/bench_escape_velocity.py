"""``escape_velocity_lr`` against the best constant step size, on quadratics and on digits.

For each quadratic ``f(w) = ½‖A(w - w*)‖²`` (started at ``w_0 = 0`` with ``init_lr = 1e-8``), each
direction (sign = ``dualize(linf)``, normalized gradient = ``dualize(l2)``) and each variant of the
rule (prodigy / cosine × initial / previous anchor × monotone or not) it runs the same number of
steps as a sweep of constant step sizes with the same direction, and reports

- the final η against the sweep's best constant step size (``eta_ratio``),
- the final loss against the sweep's best final loss (``loss_ratio``),
- the smallest growth ``η_{t+1}/η_t`` over the warm-up steps where ``cos θ_t > 0.9`` (anthology
  eq. 30: η grows geometrically until the weights escape the initial linearisation).

It then trains a Flax MLP on scikit-learn's digits with every rule around sign and spectral
(RMS→RMS) directions, no learning rate tuned, and reports the test accuracies. It prints both
tables, writes ``benchmarks/results/escape_velocity.json`` (with the environment) and a
PNG of η_t per variant. ``--quick`` runs a reduced version in well under a minute.

    .venv/bin/python -m benchmarks.bench_escape_velocity [--quick] [--out DIR]
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import normtx
from normtx import norms

from benchmarks.common import format_table, parse_args, write_json
from benchmarks.tasks import digits as digits_task

VARIANTS = [
    {"rule": r, "anchor": a, "monotone": m}
    for r, a, m in itertools.product(("prodigy", "cosine"), ("initial", "previous"), (True, False))
]
DIRECTIONS = {"sign": norms.linf, "l2": norms.l2}


# ---- quadratics ----------------------------------------------------------------------------------
def make_quadratic(name: str, n: int = 32, seed: int = 0) -> dict:
    """``A``, ``w*`` and ``w_0 = 0`` of one test problem (float64 NumPy)."""
    rng = np.random.default_rng(seed)
    if name == "isotropic":
        a = np.eye(n)
    elif name == "diagonal":  # axis-aligned, condition number of AᵀA = 100
        a = np.diag(np.geomspace(1.0, 10.0, n))
    elif name == "rotated":  # the same spectrum in a random basis: dense gradients
        q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        a = q @ np.diag(np.geomspace(1.0, 10.0, n)) @ q.T
    else:
        raise ValueError(f"unknown problem {name!r}")
    # Random signs and magnitudes in [0.5, 1.5]: a target every coordinate has to travel to.
    w_star = rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.5, 1.5, size=n)
    return {"name": name, "A": a, "w_star": w_star, "w0": np.zeros(n)}


def quadratic_loss(problem: dict, w: np.ndarray) -> np.ndarray:
    """``½‖A(w - w*)‖²`` in float64 for one ``w`` or a stack of them (last axis)."""
    r = (np.asarray(w, np.float64) - problem["w_star"]) @ problem["A"].T
    return 0.5 * np.sum(r * r, axis=-1)


def _jax_problem(problem: dict):
    h = jnp.asarray(problem["A"].T @ problem["A"], jnp.float32)
    w_star = jnp.asarray(problem["w_star"], jnp.float32)
    return h, w_star, jnp.asarray(problem["w0"], jnp.float32)


def run_variant(
    problem: dict,
    direction: str,
    steps: int,
    *,
    init_lr: float = 1e-8,
    **variant,
) -> dict:
    """Runs ``escape_velocity_lr`` for ``steps``; returns η_t, w_t, g_t (t = 0..steps-1) and w_T."""
    h, w_star, w0 = _jax_problem(problem)
    norm = DIRECTIONS[direction]()
    tx = optax.chain(
        normtx.escape_velocity_lr(normtx.dualize(norm), norm=norm, init_lr=init_lr, **variant),
        optax.scale_by_learning_rate(1.0),
    )

    @jax.jit
    def run(w0):
        def step(carry, _):
            w, state = carry
            g = h @ (w - w_star)
            eta = optax.tree_utils.tree_get(state, "eta")
            u, state = tx.update(g, state, w)
            return (w + u, state), (eta, w, g)

        (w, state), (etas, ws, gs) = jax.lax.scan(step, (w0, tx.init(w0)), length=steps)
        return w, optax.tree_utils.tree_get(state, "eta"), etas, ws, gs

    w_final, eta_final, etas, ws, gs = jax.device_get(run(w0))
    return {"eta": etas, "w": ws, "g": gs, "w_final": w_final, "eta_final": float(eta_final)}


def constant_sweep(problem: dict, direction: str, steps: int, lrs: np.ndarray) -> np.ndarray:
    """Final iterates of ``dualize(norm)`` at every constant step size of ``lrs`` (vmapped)."""
    h, w_star, w0 = _jax_problem(problem)
    dualize = normtx.dualize(DIRECTIONS[direction]())

    @jax.jit
    def run(lr):
        def step(w, _):
            u, _ = dualize.update(h @ (w - w_star), optax.EmptyState())
            return w - lr * u, None

        return jax.lax.scan(step, w0, length=steps)[0]

    return np.asarray(jax.vmap(run)(jnp.asarray(lrs, jnp.float32)))


def cosines(problem: dict, run: dict, anchor: str) -> np.ndarray:
    """``cos θ_t`` between ``g_t`` and the anchor difference (0 where either is zero)."""
    w = np.asarray(run["w"], np.float64)
    g = np.asarray(run["g"], np.float64)
    prev = np.concatenate([w[:1], w[:-1]]) if anchor == "previous" else problem["w0"][None]
    a = prev - w
    den = np.linalg.norm(g, axis=1) * np.linalg.norm(a, axis=1)
    return np.divide(np.sum(g * a, axis=1), den, out=np.zeros(len(w)), where=den > 0)


def warmup_growth(run: dict, cos: np.ndarray, *, threshold: float = 0.9, burn_in: int = 4):
    """Smallest ``η_{t+1}/η_t`` over the warm-up (t ≥ burn_in, cos θ_t > threshold, before the
    first step with ``cos θ_t <= threshold``; ``None`` if there is none), and the number of such
    steps."""
    eta = np.asarray(run["eta"], np.float64)
    growth = eta[1:] / eta[:-1]
    aligned = cos[:-1] > threshold
    first_break = np.flatnonzero(~aligned[burn_in:])
    end = burn_in + (first_break[0] if len(first_break) else len(aligned) - burn_in)
    window = growth[burn_in:end][aligned[burn_in:end]]
    return (float(window.min()) if len(window) else None), len(window)


def quadratic_table(problems: list[str], directions: list[str], steps: int, n_lrs: int):
    rows, curves = [], {}
    lrs = np.geomspace(1e-5, 1e1, n_lrs)
    for name, direction in itertools.product(problems, directions):
        problem = make_quadratic(name)
        sweep_losses = quadratic_loss(problem, constant_sweep(problem, direction, steps, lrs))
        sweep_losses = np.where(np.isfinite(sweep_losses), sweep_losses, np.inf)
        best = int(np.argmin(sweep_losses))
        for variant in VARIANTS:
            run = run_variant(problem, direction, steps, **variant)
            cos = cosines(problem, run, variant["anchor"])
            growth, n_aligned = warmup_growth(run, cos)
            final_eta = run["eta_final"]  # η_T: the step size after the last update
            etas = np.append(np.asarray(run["eta"], np.float64), final_eta)
            final_loss = float(quadratic_loss(problem, run["w_final"]))
            rows.append(
                {
                    "problem": name,
                    "direction": direction,
                    **variant,
                    "final_eta": final_eta,
                    "best_constant_lr": float(lrs[best]),
                    "eta_ratio": final_eta / float(lrs[best]),
                    "final_loss": final_loss,
                    "best_constant_loss": float(sweep_losses[best]),
                    "loss_ratio": final_loss / max(float(sweep_losses[best]), 1e-30),
                    "initial_loss": float(quadratic_loss(problem, problem["w0"])),
                    "min_warmup_growth": growth,
                    "max_step_growth": float(np.max(etas[1:] / etas[:-1])),
                    "warmup_steps_aligned": n_aligned,
                }
            )
            key = f"{name}/{direction}/{variant['rule']}/{variant['anchor']}/" + (
                "monotone" if variant["monotone"] else "free"
            )
            curves[key] = etas
    return rows, curves


# ---- digits --------------------------------------------------------------------------------------
class MLP(nn.Module):
    hidden: int = 128

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x)))


def digits_data() -> tuple[np.ndarray, ...]:
    """``benchmarks.tasks.digits``' fixed split, images flattened to 64 pixels for the MLP."""
    d = digits_task.load()
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    return flat(d["x_train"]), flat(d["x_test"]), d["y_train"], d["y_test"]


def digits_geometry(direction: str):
    """The norm of each leaf: ℓ∞ everywhere (sign), or RMS→RMS on kernels and RMS on biases.

    The RMS→RMS direction ``√(d_out/d_in) U Vᵀ`` is computed by Newton–Schulz (matrix products;
    on CPU an exact SVD polar factor costs ~100x more per step); the rule's dual norm uses exact
    singular values.
    """
    if direction == "sign":
        return norms.linf()
    if direction == "spectral":
        kernel = norms.rms_to_rms(polar="newton_schulz")
        return lambda path, leaf: kernel if leaf.ndim == 2 else norms.rms()
    raise ValueError(f"unknown direction {direction!r}")


def train_digits(direction: str, variant: dict, steps: int, data=None, seed: int = 0) -> dict:
    """Full-batch training of the MLP with ``escape_velocity_lr`` (init_lr 1e-6, lr 1)."""
    x_tr, x_te, y_tr, y_te = data if data is not None else digits_data()
    model = MLP()
    params = model.init(jax.random.key(seed), jnp.zeros((1, 64), jnp.float32))["params"]
    norm = digits_geometry(direction)
    tx = optax.chain(
        normtx.escape_velocity_lr(normtx.dualize(norm), norm=norm, init_lr=1e-6, **variant),
        optax.scale_by_learning_rate(1.0),
    )
    x_tr, y_tr = jnp.asarray(x_tr), jnp.asarray(y_tr)

    def loss_fn(p):
        logits = model.apply({"params": p}, x_tr)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_tr).mean()

    @jax.jit
    def run(params):
        def step(carry, _):
            p, state = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, state = tx.update(g, state, p)
            return (optax.apply_updates(p, u), state), (
                loss,
                optax.tree_utils.tree_get(state, "eta"),
            )

        return jax.lax.scan(step, (params, tx.init(params)), length=steps)

    (params, _), (losses, etas) = run(params)
    logits = model.apply({"params": params}, jnp.asarray(x_te))
    acc = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y_te))
    return {
        "direction": direction,
        **variant,
        "steps": steps,
        "test_accuracy": acc,
        "final_train_loss": float(losses[-1]),
        "final_eta": float(etas[-1]),
    }


# ---- report --------------------------------------------------------------------------------------
def plot_curves(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({k.rsplit("/", 3)[0] for k in curves})
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        for key, eta in curves.items():
            if key.startswith(panel + "/"):
                ax.semilogy(eta, label=key[len(panel) + 1 :])
        ax.set_title(panel)
        ax.set_xlabel("step t")
        ax.set_ylabel("η_t")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    start = time.perf_counter()
    if args.quick:
        problems, directions, steps, n_lrs = ["rotated"], ["sign"], 100, 25
        digits_runs, digits_steps = [("sign", VARIANTS[0])], 100
    else:
        problems, directions, steps, n_lrs = (
            ["isotropic", "diagonal", "rotated"],
            ["sign", "l2"],
            200,
            61,
        )
        digits_runs = list(itertools.product(("sign", "spectral"), VARIANTS))
        digits_steps = 300

    rows, curves = quadratic_table(problems, directions, steps, n_lrs)
    print(f"\nQuadratics, {steps} steps from init_lr = 1e-8 (sweep of {n_lrs} constant steps):")
    print(format_table(
        rows,
        ["problem", "direction", "rule", "anchor", "monotone", "final_eta", "best_constant_lr",
         "eta_ratio", "final_loss", "best_constant_loss", "loss_ratio", "min_warmup_growth",
         "max_step_growth"],
    ))  # fmt: skip

    data = digits_data()
    digits = [train_digits(d, v, digits_steps, data) for d, v in digits_runs]
    print(f"\nDigits MLP (64-128-10), {digits_steps} full-batch steps, init_lr = 1e-6, lr = 1:")
    print(format_table(digits, ["direction", "rule", "anchor", "monotone", "test_accuracy",
                                "final_train_loss", "final_eta"]))  # fmt: skip

    png = args.out / "escape_velocity.png"
    args.out.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, png)
    report = {
        "quick": bool(args.quick),
        "settings": {
            "steps": steps,
            "init_lr": 1e-8,
            "n_constant_lrs": n_lrs,
            "problems": problems,
            "directions": directions,
            "digits_steps": digits_steps,
        },
        "quadratic": rows,
        "digits": digits,
        "eta_plot": png.name,
        "seconds": time.perf_counter() - start,
    }
    path = write_json(args.out, "escape_velocity", report)
    print(f"\nwrote {path} and {png} in {report['seconds']:.1f} s")
    return report


if __name__ == "__main__":
    main()
