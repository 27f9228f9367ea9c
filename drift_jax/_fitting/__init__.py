"""_fitting: private sub-package of drift_jax."""
