"""Test-wide settings: 8 fake CPU devices for sharding tests, float64 available for oracles."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One LAPACK/BLAS thread per test worker: pytest-xdist runs a worker per core, and oversubscribed
# LAPACK threads spin (a 64x128 SVD took 200 ms instead of 1 ms under load).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Oracles run in float64 (NumPy, and jnp where a test asks for it explicitly); the library under
# test still receives float32/bfloat16 arrays unless a test says otherwise.
jax.config.update("jax_enable_x64", True)
