"""_io: private sub-package of drift_jax."""
