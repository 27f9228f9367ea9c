"""_evaluation: private sub-package of drift_jax."""
