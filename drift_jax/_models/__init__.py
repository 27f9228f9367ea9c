"""_models: private sub-package of drift_jax."""
