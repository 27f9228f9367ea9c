"""Constrained <-> unconstrained parameters: what ``dj.fit`` trains, and what it holds fixed.

Every array field of a model has a constraint, and a trainable field is stored as a
vector of free coordinates that maps back onto a valid value by construction:

- ``theta``, ``sigma``, ``theta_accel``, ``sigma_accel``, ``sigma_base``,
  ``crisis_amplifier``: ``> 0``; free coordinate ``log x``.
- ``loadings``, ``init_mean``: unconstrained; ``x`` itself.
- ``cov_chol`` (the Cholesky factor of ``R``): lower triangular with a positive diagonal;
  its ``n (n + 1) / 2`` lower-triangular entries with the diagonal logged.
- ``init_cov``: symmetric positive definite; its Cholesky factor, as above.
- ``transition`` (each row), ``init_probs``: probability vectors; ``log(p_j / p_ref)`` for
  ``j != ref``.

A simplex is parametrised relative to a reference entry per row (the largest entry of the
starting value, usually ``Pi``'s diagonal): its logit is held at 0, so there is no flat
direction (a softmax over all ``M`` logits is invariant to adding a constant to a row) and
the free coordinates have full rank, which a Hessian needs. A Cholesky factor keeps only
its ``n (n + 1) / 2`` lower-triangular entries for the same reason. An entry of a
probability vector that starts at exactly 0 has logit ``-inf`` and stays exactly 0 (a
structural zero: its gradient is 0).

The non-negative fields (``theta >= 0``, ``crisis_amplifier >= 0``) are trained in log
coordinates, so a trainable one must start above 0; ``theta = 0`` (a random walk) is held
at 0 by leaving it out of ``trainable``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._types import Array, Float

_POSITIVE = ("theta", "sigma", "theta_accel", "sigma_accel", "sigma_base", "crisis_amplifier")
_FREE = ("loadings", "init_mean")
_CHOLESKY = ("cov_chol",)
_SPD = ("init_cov",)
_SIMPLEX = ("transition", "init_probs")
KNOWN_FIELDS = _POSITIVE + _FREE + _CHOLESKY + _SPD + _SIMPLEX


class FitParams(NamedTuple):
    """What ``dj.fit`` fits: the filter ``model`` and the return-risk model ``risk``.

    A named pair (a pytree): ``trainable`` selectors read ``p.model`` and ``p.risk``, and
    ``model, risk = params`` unpacks it. ``risk`` is a ``dj.RiskModel`` or ``None``.
    """

    model: Any
    risk: Any = None


class Unconstrained(eqx.Module):
    """A trainable field in free coordinates, and the map back onto its constraint.

    ``raw`` is the vector (or matrix, for the rows of ``Pi``) that an optimiser moves;
    ``value()`` is the field. ``kind``, ``shape`` and ``ref`` are static.
    """

    raw: Float[Array, "..."]
    kind: str = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    ref: tuple[int, ...] = eqx.field(static=True, default=())

    def value(self) -> Float[Array, "..."]:
        """The constrained field, of shape ``shape``."""
        if self.kind == "free":
            return self.raw
        if self.kind == "log":
            return jnp.exp(self.raw)
        if self.kind in ("cholesky", "spd"):
            n = self.shape[-1]
            rows, cols = np.tril_indices(n)
            on_diag = jnp.asarray(rows == cols)
            # exp only on the diagonal: an overflowing untaken branch would poison the gradient
            packed = jnp.where(on_diag, jnp.exp(jnp.where(on_diag, self.raw, 0.0)), self.raw)
            L = jnp.zeros(self.shape, self.raw.dtype).at[rows, cols].set(packed)
            return L if self.kind == "cholesky" else L @ L.T
        # simplex rows: the reference entry's logit is 0, the others are free.
        logits = _insert_reference(self.raw, self.ref, self.shape)
        return jax.nn.softmax(logits, axis=-1)


def _insert_reference(raw: Array, ref: tuple[int, ...], shape: tuple[int, ...]) -> Array:
    M = shape[-1]
    rows = raw.reshape(len(ref), M - 1)
    full = []
    for i, r in enumerate(ref):
        zero = jnp.zeros((1,), raw.dtype)
        full.append(jnp.concatenate([rows[i, :r], zero, rows[i, r:]]))
    return jnp.stack(full).reshape(shape)


def _field_name(path) -> str:
    for entry in reversed(path):
        if isinstance(entry, jax.tree_util.GetAttrKey):
            return entry.name
    return jax.tree_util.keystr(path)


def _to_free(path, x: Array) -> Unconstrained:
    """Free coordinates of the concrete value ``x`` of the field at ``path``."""
    name = _field_name(path)
    where = jax.tree_util.keystr(path)
    x = jnp.asarray(x)
    shape = tuple(x.shape)
    if name in _FREE:
        return Unconstrained(x, "free", shape)
    if name in _POSITIVE:
        xn = np.asarray(x)
        if not np.all(np.isfinite(xn) & (xn > 0)):
            raise ValueError(
                f"`{name}` ({where}) is trainable but equals {xn.tolist()}: it is trained in log "
                f"coordinates and must start > 0. Start it from a positive value, or leave "
                f"it out of `trainable` to hold it fixed (e.g. theta = 0, a random walk)."
            )
        return Unconstrained(jnp.log(x), "log", shape)
    if name in _CHOLESKY or name in _SPD:
        L = jnp.tril(x) if name in _CHOLESKY else jnp.linalg.cholesky(x)
        rows, cols = np.tril_indices(shape[-1])
        packed = L[rows, cols]
        diag = np.asarray(packed)[rows == cols]
        if not np.all(np.isfinite(diag) & (diag > 0)):
            raise ValueError(
                f"`{name}` ({where}) must have a Cholesky factor with a positive diagonal to "
                f"be trained; got {name}={np.asarray(x).tolist()}."
            )
        on_diag = jnp.asarray(rows == cols)
        packed = jnp.where(on_diag, jnp.log(jnp.where(on_diag, packed, 1.0)), packed)
        return Unconstrained(packed, "cholesky" if name in _CHOLESKY else "spd", shape)
    if name in _SIMPLEX:
        P = np.asarray(x).reshape(-1, shape[-1])
        ref = tuple(int(i) for i in np.argmax(P, axis=-1))
        rows = x.reshape(-1, shape[-1])
        logs = []
        for i, r in enumerate(ref):
            lr = jnp.log(rows[i]) - jnp.log(rows[i, r])
            logs.append(jnp.concatenate([lr[:r], lr[r + 1 :]]))
        raw = jnp.stack(logs)
        raw = raw[0] if x.ndim == 1 else raw
        return Unconstrained(raw, "simplex", shape, ref)
    raise ValueError(
        f"no constraint is known for the field `{name}` ({where}); trainable fields are "
        f"{KNOWN_FIELDS}."
    )


def trainable_mask(params, trainable=None):
    """A pytree of bools like ``params``: ``True`` on the leaves that are trained.

    Arguments:
        params: any pytree of models (a model, a ``dj.RiskModel``, a ``dj.FitParams``).
        trainable: ``None`` (every leaf), a selector function as ``eqx.tree_at`` takes
            (``lambda p: (p.model.dynamics[0].sigma, p.model.observation.cov_chol)``;
            selecting a sub-module trains all of its leaves), or a pytree of bools with
            the structure of ``params`` or a prefix of it (``dj.FitParams(True, False)``).

    Returns:
        The mask, a pytree of Python bools with the structure of ``params``.

    Example:
        >>> import drift_jax as dj, jax
        >>> model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(2.0))
        >>> mask = dj.trainable_mask(model, lambda m: m.dynamics.sigma)
        >>> sum(jax.tree.leaves(mask))
        1
    """
    falses = jax.tree.map(lambda _: False, params)
    if trainable is None:
        return jax.tree.map(lambda _: True, params)
    if callable(trainable) and not isinstance(trainable, (bool, np.bool_)):
        try:
            return eqx.tree_at(
                trainable, falses, replace_fn=lambda node: jax.tree.map(lambda _: True, node)
            )
        except Exception as err:  # noqa: BLE001 -- re-raised with the argument named
            raise ValueError(
                f"`trainable` must select fields of the parameters as `eqx.tree_at` takes "
                f"(e.g. `lambda p: p.model.dynamics.sigma`); calling it failed with: {err}"
            ) from err
    try:
        return jax.tree.map(
            lambda b, sub: jax.tree.map(lambda _: bool(b), sub),
            trainable,
            params,
            is_leaf=lambda x: isinstance(x, (bool, np.bool_)),
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"`trainable` must be None, a selector function or a pytree of bools with the "
            f"structure of the parameters (or a prefix of it); got {trainable!r} for "
            f"parameters with structure {jax.tree.structure(params)}."
        ) from err


def unconstrain(params, trainable=None):
    """The trainable fields of ``params`` in free coordinates (``None`` at the fixed ones).

    Arguments:
        params: a model, a ``dj.RiskModel``, a ``dj.FitParams`` (any pytree of them).
        trainable: which fields are trained; see ``dj.trainable_mask`` (default: all).

    Returns:
        A pytree like ``params`` with a ``dj.Unconstrained`` in place of each trainable
        leaf and ``None`` elsewhere; ``jax.flatten_util.ravel_pytree`` of it is the vector
        of free coordinates (full rank: no redundant direction).

    Example:
        >>> import drift_jax as dj, jax.numpy as jnp
        >>> imm = dj.IMMModel((dj.OU(0.1, 0.3), dj.OU(0.01, 2.0)), dj.Observation.scalar(1.0),
        ...                   [[0.9, 0.1], [0.2, 0.8]])
        >>> raw = dj.unconstrain(imm, lambda m: m.transition)
        >>> raw.transition.raw.shape  # one free logit per row
        (2, 1)
        >>> back = dj.constrain(raw, imm)
        >>> bool(jnp.allclose(back.transition, imm.transition))
        True
    """
    mask = trainable_mask(params, trainable)
    chosen, _ = eqx.partition(params, mask)
    return jax.tree_util.tree_map_with_path(_to_free, chosen)


def _is_unconstrained(x) -> bool:
    return isinstance(x, Unconstrained)


def constrain(raw, params):
    """``params`` with its trainable fields replaced by the values of ``raw``.

    The fields that ``raw`` leaves ``None`` are taken from ``params`` unchanged (the same
    arrays, bit for bit). Works under ``jit``, ``vmap`` and ``grad`` (no validation runs:
    valid by construction).

    Arguments:
        raw: free coordinates from ``dj.unconstrain`` (possibly moved by an optimiser).
        params: the parameters ``raw`` was made from (supplies the fixed fields).

    Returns:
        A pytree like ``params``.
    """
    values = jax.tree.map(lambda u: u.value(), raw, is_leaf=_is_unconstrained)
    return eqx.combine(values, params)


def perturb(raw, key, scale: float):
    """``raw`` with i.i.d. ``N(0, scale^2)`` noise added to every free coordinate."""
    leaves, treedef = jax.tree.flatten(raw)
    keys = jax.random.split(key, max(len(leaves), 1))
    noisy = [
        x + scale * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)
