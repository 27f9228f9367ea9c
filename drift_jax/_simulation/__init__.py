"""_simulation: private sub-package of drift_jax."""
