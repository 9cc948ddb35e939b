"""Float64 NumPy ports of NorMuon, AdaMuon and Dion (each paper's Algorithm 1), as test oracles.

Written from the papers in their own layout: a weight ``W ∈ R^{m×n}`` with ``m = d_out`` rows (the
PyTorch ``(out, in)`` layout of the papers' code), so a Flax kernel ``K`` of shape
``(d_in, d_out)`` enters as ``W = Kᵀ`` and its update leaves as the transpose. Each function runs
the algorithm over a list of gradients and returns the *descent directions* ``D_t`` (in the Flax
layout) that the weight update subtracts: ``W_t = W_{t-1} - η (D_tᵀ + λ W_{t-1})``.
"""

from __future__ import annotations

import numpy as np

MUON_QUINTIC = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: np.ndarray, steps: int = 5, coefficients=MUON_QUINTIC) -> np.ndarray:
    """Muon's ``NS5``: ``X ← aX + b(XXᵀ)X + c(XXᵀ)²X`` from ``X₀ = G/‖G‖_F`` on the short side."""
    a, b, c = coefficients
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    norm = np.linalg.norm(x)
    x = x / norm if norm > 0 else x
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


def polar(g: np.ndarray) -> np.ndarray:
    """``U Vᵀ`` of ``G = U Σ Vᵀ`` (reduced float64 SVD)."""
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    return u @ vt


def normuon(
    kernel_grads, *, beta1=0.95, beta2=0.95, eps=1e-8, rms=0.2, nesterov=False, orthogonalize=None
):
    """NorMuon (Li et al. 2025, Algorithm 1), without weight decay:

    ``M_t = β₁M_{t-1} + (1-β₁)G_t``, ``O_t = NS5(M_t)`` (Nesterov, as the official code:
    ``NS5((1-β₁)G_t + β₁M_t)``),
    ``v_t = β₂v_{t-1} + (1-β₂) mean_cols(O_t ⊙ O_t)`` (``v ∈ R^m``, one entry per row/neuron),
    ``Ô_t = O_t ⊘ (√V_t + ε)``, update ``0.2 √(mn) Ô_t/‖Ô_t‖_F`` (``η̂ = 0.2η√(mn)/‖Ô_t‖_F``).
    """
    orthogonalize = orthogonalize or newton_schulz
    m = v = None
    out = []
    for k in kernel_grads:
        g = np.asarray(k, np.float64).T  # W layout (d_out, d_in)
        m = (1 - beta1) * g if m is None else beta1 * m + (1 - beta1) * g
        o = orthogonalize((1 - beta1) * g + beta1 * m if nesterov else m)
        mean_cols = np.mean(o * o, axis=1)
        v = (1 - beta2) * mean_cols if v is None else beta2 * v + (1 - beta2) * mean_cols
        o_hat = o / (np.sqrt(v)[:, None] + eps)
        out.append((rms * np.sqrt(o.size) * o_hat / np.linalg.norm(o_hat)).T)
    return out


def adamuon(kernel_grads, *, beta1=0.95, beta2=0.95, eps=1e-8, rms=0.2, nesterov=False,
            orthogonalize=None):  # fmt: skip
    """AdaMuon (Si et al. 2025, Algorithm 1), without weight decay:

    ``M_t = β₁M_{t-1} + G_t`` (Nesterov: ``G_t + β₁M_t``), ``O_t = NS(Sign(M_t))``,
    ``V_t = β₂V_{t-1} + (1-β₂) O_t ⊙ O_t``, ``Ô_t = O_t ⊘ (√V_t + ε)``,
    update ``γ_t Ô_t`` with ``γ_t = 0.2 √(mn)/‖Ô_t‖_F``.
    """
    orthogonalize = orthogonalize or newton_schulz
    m = v = None
    out = []
    for k in kernel_grads:
        g = np.asarray(k, np.float64).T
        m = g if m is None else beta1 * m + g
        o = orthogonalize(np.sign(g + beta1 * m if nesterov else m))
        v = (1 - beta2) * o * o if v is None else beta2 * v + (1 - beta2) * o * o
        o_hat = o / (np.sqrt(v) + eps)
        out.append((rms * np.sqrt(o.size) * o_hat / np.linalg.norm(o_hat)).T)
    return out


def dion(kernel_grads, q0, *, mu=0.95):
    """Centralized Dion (Ahn et al. 2025, Algorithm 1 with PowerIter1), ``W ∈ R^{m×n}``:

    ``B_t = M_{t-1} + G_t``; ``P_t = QR(B_t Q_{t-1})``; ``R_t = B_tᵀ P_t``;
    ``M_t = μB_t + (1-μ)(B_t - P_t R_tᵀ)``; ``Q_t = ColumnNormalize(R_t)``;
    update ``√(m/n) P_t Q_tᵀ``. ``q0`` is ``Q_0 ∈ R^{n×r}`` (``n = d_in``).

    Returns ``(directions in the Flax layout, momenta in the Flax layout, Q_t's)``.
    """
    q = np.asarray(q0, np.float64)
    mom = None
    dirs, moms, qs = [], [], []
    for k in kernel_grads:
        g = np.asarray(k, np.float64).T
        b = g if mom is None else mom + g
        p, _ = np.linalg.qr(b @ q)
        r = b.T @ p
        mom = mu * b + (1 - mu) * (b - p @ r.T)
        q = r / np.linalg.norm(r, axis=0, keepdims=True)
        m, n = b.shape
        dirs.append((np.sqrt(m / n) * p @ q.T).T)
        moms.append(mom.T)
        qs.append(q)
    return dirs, moms, qs
