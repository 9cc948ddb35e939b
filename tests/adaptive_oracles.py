"""Independent float64 NumPy oracles for the adaptive family (Stratos, *Adaptive Learning Methods*).

Each function is the notes' equations written out step by step over a fixed gradient sequence
``grads = [g_1, ..., g_T]`` (the oracle does not import normtx, optax or JAX). Iterates are
returned as ``[w_1, ..., w_{T+1}]`` where ``w_{t+1} = w_t + u_t``. Where the notes carry an erratum
the oracle follows the intended math and says so.
"""

from __future__ import annotations

import numpy as np


def f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _iterate(w0, updates):
    ws = [f64(w0)]
    for u in updates:
        ws.append(ws[-1] + u)
    return ws


# --- §2, §3.3, §4: SGD, AdaGrad, RMSProp, Adam -------------------------------------------------


def sgd(w0, grads, lr):
    """Eq. 21: ``w_{t+1} = w_t - η g_t``."""
    return _iterate(w0, [-lr * f64(g) for g in grads])


def adagrad_diagonal(w0, grads, lr):
    """Eq. 37: ``w_{t+1,i} = w_{t,i} - η g_{t,i} / sqrt(Σ_{l<=t} g_{l,i}²)``."""
    acc, ups = 0.0, []
    for g in map(f64, grads):
        acc = acc + g**2
        ups.append(-lr * g / np.sqrt(acc))
    return _iterate(w0, ups)


def rmsprop(w0, grads, lr, b1, b2):
    """Eq. 38: ``w_{t+1} = w_t - η m_t / sqrt(v_t)`` (``b1 = 0``: ``m_t = g_t``, Tieleman's form)."""
    m, v, ups = 0.0, 0.0, []
    for g in map(f64, grads):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        ups.append(-lr * m / np.sqrt(v))
    return _iterate(w0, ups)


def adamw_section_4_4(w0, grads, *, eta_max, lam_max, s, b1, b2, eps, amsgrad=False):
    """The AdamW algorithm of §4.4 with the DESIGN §6 sign erratum fixed.

    ``w_{t+1} = w_t - s_t (η_max m̄_t/(sqrt(v̂_t) + ε) + λ_max w_t)``; ``s`` is a list of ``s_t``.
    With ``lam_max = 0`` and ``s_t = 1`` it is Adam (eq. 39 with the ε of step (d)).
    """
    m = v = vmax = 0.0
    ws = [f64(w0)]
    for t, g in enumerate(map(f64, grads), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        mbar, vbar = m / (1 - b1**t), v / (1 - b2**t)
        vmax = np.maximum(vmax, vbar)
        vhat = vmax if amsgrad else vbar
        w = ws[-1]
        ws.append(w - s[t - 1] * (eta_max * mbar / (np.sqrt(vhat) + eps) + lam_max * w))
    return ws


def adamw_coupled(w0, grads, *, eta, lam, b1, b2, eps):
    """Coupled AdamW (end of §4.3, sign fixed): ``w_{t+1} = w_t - η_t (m̄/(sqrt(v̄)+ε) + λ w_t)``."""
    m = v = 0.0
    ws = [f64(w0)]
    for t, g in enumerate(map(f64, grads), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        mbar, vbar = m / (1 - b1**t), v / (1 - b2**t)
        w = ws[-1]
        ws.append(w - eta[t - 1] * (mbar / (np.sqrt(vbar) + eps) + lam * w))
    return ws


# --- §5.1 Adafactor, Appendix K NMF ------------------------------------------------------------


def adafactor_section_5_1(w0, grads, lr, beta):
    """§5.1: ``W_{t+1} = W_t - η G_t / sqrt(V̂_t)``, ``V̂_t = ā_t s̄_tᵀ / (1ᵀ ā_t)``.

    ``a_t`` is the EMA of the row sums ``G_t² 1_n`` and ``s_t`` of the column sums ``(G_t²)ᵀ 1_m``
    (the notes print ``G_tᵀ 1_n`` for the first, which does not type-check: read ``G_t² 1_n``);
    bars are bias corrections ``1/(1 - β^t)``. Momentum off: ``M_t = G_t``.
    """
    a = s = 0.0
    ups = []
    for t, g in enumerate(map(f64, grads), start=1):
        a = beta * a + (1 - beta) * (g**2).sum(axis=1)
        s = beta * s + (1 - beta) * (g**2).sum(axis=0)
        abar, sbar = a / (1 - beta**t), s / (1 - beta**t)
        vhat = np.outer(abar, sbar) / abar.sum()
        ups.append(-lr * g / np.sqrt(vhat))
    return _iterate(w0, ups)


def nmf_rank1_closed_form(c):
    """§5.1 / Appendix K: the rank-1 I-divergence NMF of ``C`` is ``C 1 1ᵀ C / (1ᵀ C 1)``."""
    c = f64(c)
    return np.outer(c.sum(axis=1), c.sum(axis=0)) / c.sum()


def idiv(c, p):
    """Eq. 91: ``Σ c log(c/p) - c + p``."""
    c, p = f64(c), f64(p)
    return float(np.sum(np.where(c > 0, c * np.log(np.where(c > 0, c, 1) / p), 0) - c + p))


def em_round_sequential(c, a, b):
    """Eq. 95 for ``A``, then ``B`` given the new ``A`` (footnote 11: generalised EM by blocks)."""
    c, a, b = f64(c), f64(a), f64(b)
    r = c / (a @ b)
    a_new = a * (r @ b.T) / b.sum(axis=1)[None, :]
    b_new = b * (a.T @ r) / a_new.sum(axis=0)[:, None]
    return a_new, b_new


def em_round_simultaneous(c, a, b):
    """The literal K.2 pseudocode: both blocks from ``(A_{t-1}, B_{t-1})``, ``B`` over ``A_{t-1}ᵀ1``."""
    c, a, b = f64(c), f64(a), f64(b)
    r = c / (a @ b)
    return a * (r @ b.T) / b.sum(axis=1)[None, :], b * (a.T @ r) / a.sum(axis=0)[:, None]


def adam_nmf(grads, a0, b0, *, eps_sq, em_steps=1, b1=None, b2=0.0):
    """K.2 AdamNMF (``G_t ∈ R^{m×n}``, DESIGN §6) with the sequential EM round; returns updates.

    Options as in normtx: ``b1`` a bias-corrected first moment; ``b2`` an EMA target
    ``C_t = (1 - w_t) A_{t-1}B_{t-1} + w_t (G_t² + eps_sq)``, ``w_t = (1-b2)/(1-b2^t)``.
    Returns ``(updates, products)`` with ``products[t] = A_t B_t``.
    """
    a, b = f64(a0), f64(b0)
    m = 0.0
    ups, prods = [], []
    for t, g in enumerate(map(f64, grads), start=1):
        c = g**2 + eps_sq
        if b2:
            w = (1 - b2) / (1 - b2**t)
            c = (1 - w) * (a @ b) + w * c
        for _ in range(em_steps):
            a, b = em_round_sequential(c, a, b)
        num = g
        if b1 is not None:
            m = b1 * m + (1 - b1) * g
            num = m / (1 - b1**t)
        ups.append(num / np.sqrt(a @ b))
        prods.append(a @ b)
    return ups, prods


# --- §3.2 full AdaGrad, §6 Shampoo, Appendix G, I.1 --------------------------------------------


def psd_power(a, power):
    """``A^power`` of a symmetric PSD matrix by float64 eigh.

    Eigenvalues below ``n · eps · λ_max`` (rounding of a singular matrix) count as 0 and a
    negative power maps them to 0: the pseudo-inverse power.
    """
    w, v = np.linalg.eigh(f64(a))
    keep = w > len(w) * np.finfo(np.float64).eps * max(w.max(), 0.0)
    wp = np.where(keep, np.where(keep, w, 1.0) ** power, 0.0)
    return (v * wp) @ v.T


def full_adagrad(grads, *, eps, ridge=0.0):
    """§3.2.1: ``u_t = (O_t + ε I)^{-1/2} g_t`` with ``O_t = Σ_{l<=t} g_l g_lᵀ`` (flattened).

    ``ridge`` adds ``ridge · ‖O_t + εI‖_F`` to the diagonal (the relative ridge of the roots).
    """
    d = f64(grads[0]).size
    o = np.zeros((d, d))
    ups = []
    for g in map(f64, grads):
        x = g.reshape(-1)
        o = o + np.outer(x, x)
        a = o + eps * np.eye(d)
        a = a + ridge * np.linalg.norm(a) * np.eye(d)
        ups.append((psd_power(a, -0.5) @ x).reshape(g.shape))
    return ups


def shampoo(grads, *, beta2=None, exponent=-0.25, idealized=False, every=1, start=1):
    """Eq. 40 (``beta2=None``: sums) or §6.1 (bias-corrected EMA): ``L^{e} G R^{e}``.

    ``idealized`` is the Appendix I.1 iteration: ``tr(L)^{1/2} L^{-1/2} G R^{-1/2}`` (the notes
    print ``tr^{-1/2}``; the Newton step of Lemma I.1, ``I_emp^{-1/2} g``, has ``tr^{+1/2}``).
    Roots are recomputed at steps ``t = start, start + every, ...`` and reused in between; before
    ``start`` the update is ``G`` itself (no grafting).
    """
    m, n = f64(grads[0]).shape
    L, R = np.zeros((m, m)), np.zeros((n, n))
    left = right = None
    ups = []
    for t, g in enumerate(map(f64, grads), start=1):
        if beta2 is None:
            L, R = L + g @ g.T, R + g.T @ g
            Lh, Rh = L, R
        else:
            L = beta2 * L + (1 - beta2) * g @ g.T
            R = beta2 * R + (1 - beta2) * g.T @ g
            Lh, Rh = L / (1 - beta2**t), R / (1 - beta2**t)
        if t >= start and (t - start) % every == 0:
            if idealized:
                left, right = np.sqrt(np.trace(Lh)) * psd_power(Lh, -0.5), psd_power(Rh, -0.5)
            else:
                left, right = psd_power(Lh, exponent), psd_power(Rh, exponent)
        ups.append(g if t < start else left @ g @ right)
    return ups


def soap(grads, *, b1, b2, eps, frequency, shampoo_beta=None, left=True, right=True, spectra=None):
    """SOAP (Vyas et al. 2024) on one matrix ``G`` (m × n), step by step as the paper's reference
    code: Adam on ``Q_Lᵀ G Q_R`` with the first moment in the original space.

    Call 1 only accumulates ``L = (1-β_s) G Gᵀ``, ``R = (1-β_s) Gᵀ G`` and takes their
    eigenvectors (``eigh``, largest eigenvalue first); its update is 0. Call ``k >= 2`` is Adam's
    step ``t = k - 1`` in the current basis (ε added to the debiased ``sqrt(v̂)``, as optax),
    then ``L``, ``R`` take ``G``, then if ``t % frequency == 0`` each basis is refreshed: its
    columns sorted by ``diag(Qᵀ L Q)`` (largest first) with ``V``'s rows/columns, then
    ``Q ← qr(L Q)``. ``left``/``right`` False: that side has no statistic (identity basis).
    ``shampoo_beta=None`` is ``b2``. Returns the updates (descent directions); a list passed as
    ``spectra`` receives the eigenvalues of every statistic a basis is computed from.
    """
    bs = b2 if shampoo_beta is None else shampoo_beta
    m, n = f64(grads[0]).shape
    stat = {"L": np.zeros((m, m)), "R": np.zeros((n, n))}
    basis = {"L": np.eye(m), "R": np.eye(n)}
    on = {"L": left, "R": right}
    M, V = np.zeros((m, n)), np.zeros((m, n))
    ups = []
    for k, g in enumerate(map(f64, grads), start=1):
        t = k - 1
        if k == 1:
            ups.append(np.zeros((m, n)))
        else:
            ql, qr = basis["L"], basis["R"]
            gp = ql.T @ g @ qr
            M = b1 * M + (1 - b1) * g
            V = b2 * V + (1 - b2) * gp**2
            n_rot = (ql.T @ M @ qr / (1 - b1**t)) / (np.sqrt(V / (1 - b2**t)) + eps)
            ups.append(ql @ n_rot @ qr.T)
        stat["L"] = bs * stat["L"] + (1 - bs) * g @ g.T
        stat["R"] = bs * stat["R"] + (1 - bs) * g.T @ g
        for side, axis in (("L", 0), ("R", 1)):
            if not on[side] or (k > 1 and t % frequency):
                continue
            if spectra is not None:
                spectra.append(np.linalg.eigvalsh(stat[side]))
            if k == 1:
                basis[side] = np.linalg.eigh(stat[side])[1][:, ::-1]
            else:
                q = basis[side]
                order = np.argsort(-np.diag(q.T @ stat[side] @ q), kind="stable")
                V = np.take(V, order, axis=axis)
                basis[side] = np.linalg.qr(stat[side] @ q[:, order])[0]
    return ups


# --- Appendix E: exponentiated gradient --------------------------------------------------------


def exponentiated_gradient(w0, grads, lr, axis=None):
    """Eq. 60: ``w_{t+1} ∝ w_t exp(-η g_t)`` (normalised along ``axis``; all entries for None)."""
    ws = [f64(w0)]
    for g in map(f64, grads):
        x = ws[-1] * np.exp(-lr * g)
        ws.append(x / x.sum(axis=axis, keepdims=True))
    return ws


def kl(u, w):
    u, w = f64(u), f64(w)
    return float(np.sum(np.where(u > 0, u * np.log(np.where(u > 0, u, 1) / w), 0)))
