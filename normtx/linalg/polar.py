"""``polar``: one entry point to the polar factor ``U Vᵀ`` (anthology Appendix A)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax

from normtx.linalg.newton_schulz import newton_schulz
from normtx.linalg.roots import inverse_root_polar
from normtx.linalg.sketch import sketch_polar
from normtx.linalg.svd import svd_polar

__all__ = ["POLAR_METHODS", "PolarMethod", "check_polar_method", "polar"]

PolarMethod = (
    Literal["svd", "newton_schulz", "inverse_root", "sketch"] | Callable[[jax.Array], jax.Array]
)
# Methods a Norm can use (``norms.spectral(polar=...)``): they need nothing but the matrix.
POLAR_METHODS: tuple[str, ...] = ("svd", "newton_schulz", "inverse_root")
_FUNCTIONS = {
    "svd": svd_polar,
    "newton_schulz": newton_schulz,
    "inverse_root": inverse_root_polar,
    "sketch": sketch_polar,
}


def check_polar_method(method, what: str = "polar", *, allow_sketch: bool = False) -> None:
    """Raises ``ValueError`` for an unknown method name (callables are accepted as they are).

    ``'sketch'`` is accepted only with ``allow_sketch`` (by ``polar`` itself): it needs a PRNG key
    and a rank, which a Norm has no way to supply.
    """
    if callable(method):
        return
    if method == "sketch" and not allow_sketch:
        raise ValueError(
            f"{what}: polar method 'sketch' needs an explicit PRNG key and a rank, so it cannot be "
            f"a Norm's method; call normtx.linalg.polar(g, method='sketch', key=..., rank=...) "
            f"directly, or pass a callable such as functools.partial(normtx.linalg.polar, "
            f"method='sketch', key=key, rank=k). Norm methods: {POLAR_METHODS}."
        )
    known = (*POLAR_METHODS, "sketch") if allow_sketch else POLAR_METHODS
    if method not in known:
        raise ValueError(
            f"{what}: unknown polar method {method!r}; expected one of "
            f"{known} or a callable (..., m, n) -> (..., m, n)."
        )


def polar(g: jax.Array, *, method: PolarMethod = "svd", **options) -> jax.Array:
    """The polar factor ``U Vᵀ`` of each matrix in ``g`` of shape ``(..., m, n)``.

    Args:
      g: matrices; leading axes are a batch.
      method: ``'svd'`` (exact), ``'newton_schulz'`` (``linalg.newton_schulz``; options ``steps``,
        ``coefficients``, ``eps``, ``compute_dtype``), ``'inverse_root'``
        (``(G Gᵀ)^{-1/2} G`` by ``linalg.inverse_root_polar``; options ``ridge``, ``max_iters``),
        ``'sketch'`` (rank-k ``U_k V_kᵀ`` by ``linalg.sketch_polar``; options ``key`` (required),
        ``rank`` (required), ``oversampling``, ``power_iterations``), or a callable.
      **options: passed to the method's function.

    Returns:
      ``U Vᵀ`` (``U diag(σ > tol) Vᵀ`` for rank-deficient inputs; 0 for 0) in ``g``'s compute dtype.
    """
    check_polar_method(method, allow_sketch=True)
    if callable(method):
        return method(g, **options)
    return _FUNCTIONS[method](g, **options)
