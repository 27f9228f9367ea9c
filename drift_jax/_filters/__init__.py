"""_filters: private sub-package of drift_jax."""
