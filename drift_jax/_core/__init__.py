"""_core: private sub-package of drift_jax."""
