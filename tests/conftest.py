"""Test-wide settings: 8 fake CPU devices for sharding tests, float64 available for oracles."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

# Oracles run in float64 (NumPy, and jnp where a test asks for it explicitly); the library under
# test still receives float32/bfloat16 arrays unless a test says otherwise.
jax.config.update("jax_enable_x64", True)
