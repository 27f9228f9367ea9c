"""``dj.jit``: ``equinox.filter_jit`` whose failed input checks read as one line.

The library checks traced values (an infinite feature, a negative ``dt``) with
``eqx.error_if``. Under a plain ``jax.jit`` a failed check surfaces as JAX's
``JaxRuntimeError: INTERNAL: CpuCallback error`` and a page of traceback, with the
message somewhere inside; under ``eqx.filter_jit`` it is an ``EquinoxRuntimeError``
whose text holds both stacks and debugging advice. ``dj.jit`` runs the function under
``eqx.filter_jit`` and turns such a failure into ``dj.TracedCheckError`` (a
``ValueError``) carrying the check's own one-line message, e.g. ``zs must not contain
+-inf (NaN marks missing)``; the full equinox error stays attached (``equinox_error``).
"""

from __future__ import annotations

import functools

import equinox as eqx

_MARK = "EquinoxRuntimeError: "


class TracedCheckError(ValueError):
    """An input check that ran inside a compiled function (``dj.jit``) failed.

    ``equinox_error``: the original ``EquinoxRuntimeError``, with the stacks inside and
    outside the compiled function."""

    __module__ = "drift_jax"  # shown as drift_jax.TracedCheckError

    def __init__(self, message: str, equinox_error: BaseException | None = None):
        super().__init__(message)
        self.equinox_error = equinox_error


def check_message(err: BaseException) -> str:
    """The failed check's own message from an equinox runtime error's text."""
    for line in str(err).splitlines():
        if _MARK in line:
            return line.split(_MARK, 1)[1].strip()
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def jit(fun=None, **jit_kwargs):
    """Compile ``fun`` like ``eqx.filter_jit`` (arrays traced, everything else static);
    a failed input check inside raises ``dj.TracedCheckError`` with a one-line message.

    Use it (or ``eqx.filter_jit``) instead of ``jax.jit`` around code that calls the
    library on data that may be bad: under ``jax.jit`` the same failure is JAX's
    ``CpuCallback error`` with the message buried in a page of traceback.

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> model = dj.seed_imm(dj.Observation.scalar(4.0))
        >>> loglik = dj.jit(lambda z: dj.filter(model, z, 0.5).log_likelihood)
        >>> bool(np.isfinite(loglik(np.zeros(20))))
        True
        >>> loglik(np.array([0.0, np.inf, 0.0]))
        Traceback (most recent call last):
        ...
        drift_jax.TracedCheckError: `zs` must not contain +-inf (NaN marks missing).
    """
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    compiled = eqx.filter_jit(fun, **jit_kwargs)

    @functools.wraps(fun)
    def run(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except RuntimeError as err:
            if type(err).__name__ not in ("EquinoxRuntimeError", "_EquinoxRuntimeError"):
                raise
            # One line, not equinox's page: the check's own message names the argument.
            raise TracedCheckError(check_message(err), err) from None

    return run
