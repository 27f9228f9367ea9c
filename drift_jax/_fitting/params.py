"""Constrained <-> unconstrained parameters: what ``dj.fit`` trains, and what it holds fixed.

Every array field of a model declares its constraint on the field
(``eqx.field(metadata={"constraint": dj.Positive()})``, ``_models/constraints.py``), and a
trainable field is stored as a vector of free coordinates that maps back onto a valid
value by construction. The constraint is read from the field's declaration, never from
its name: a new dynamics class whose fields declare constraints is trained like
``dj.OU``. A trainable field that declares none is a ``ValueError`` (its free
coordinates are not guessed); hold it fixed by leaving it out of ``trainable``.

The built-in fields:

- ``theta``, ``sigma``, ``theta_accel``, ``sigma_accel`` (``dj.NonNegative``),
  ``sigma_base`` (``dj.Positive``), ``crisis_amplifier`` (``dj.NonNegative``): free
  coordinate ``log x``.
- ``loadings``, ``init_mean`` (``dj.Real``): ``x`` itself.
- ``cov_chol`` (the Cholesky factor of ``R``, ``dj.LowerCholesky``): its
  ``n (n + 1) / 2`` lower-triangular entries with the diagonal logged.
- ``init_cov`` (``dj.PositiveDefinite``): its Cholesky factor, as above.
- ``transition`` (``dj.SimplexRows``), ``init_probs`` (``dj.Simplex``): probability
  vectors; ``log(p_j / p_ref)`` for ``j != ref``.
- ``rates`` (``dj.Generator``, continuous-time regimes): the logs of the off-diagonal
  rates (the diagonal is minus their row sum); a rate that starts at 0 stays 0.

A simplex is parametrised relative to a reference entry per row (the largest entry of the
starting value), so the free coordinates have full rank; an entry that starts at exactly 0
stays exactly 0 (a structural zero). The non-negative fields (``theta >= 0``,
``crisis_amplifier >= 0``) are trained in log coordinates, so a trainable one must start
above 0; ``theta = 0`` (a random walk) is held at 0 by leaving it out of ``trainable``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core.types import Array, Float
from .._models.constraints import AbstractConstraint, leaf_constraint, undeclared_error


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
    ``value()`` is the field. ``constraint`` (the field's declared ``dj.Positive()``,
    ``dj.SimplexRows()``, ...), ``shape`` and ``ref`` (a simplex's reference entry per
    row) are static.
    """

    raw: Float[Array, "..."]
    constraint: AbstractConstraint = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    ref: tuple[int, ...] = eqx.field(static=True, default=())

    def value(self) -> Float[Array, "..."]:
        """The constrained field, of shape ``shape``."""
        return self.constraint.from_free(self.raw, self.shape, self.ref)


def _to_free(params, path, x: Array) -> Unconstrained:
    """Free coordinates of the concrete value ``x`` of the field at ``path`` of ``params``."""
    constraint, name, owner = leaf_constraint(params, path)
    where = jax.tree_util.keystr(path)
    if constraint is None:
        raise undeclared_error(name, where, owner)
    x = jnp.asarray(x)
    raw, ref = constraint.to_free(x, name, where)
    return Unconstrained(raw, constraint, tuple(x.shape), ref)


def _check_declared(params, mask) -> None:
    """Every leaf that ``mask`` trains declares a constraint on its field."""
    for path, trained in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if trained:
            constraint, name, owner = leaf_constraint(params, path)
            if constraint is None:
                raise undeclared_error(name, jax.tree_util.keystr(path), owner)


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

    Raises:
        ValueError: when a selected leaf's field declares no constraint (its free
            coordinates are not guessed from its name; see ``_models/constraints.py``).

    Example:
        >>> import drift_jax as dj, jax
        >>> model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(2.0))
        >>> mask = dj.trainable_mask(model, lambda m: m.dynamics.sigma)
        >>> sum(jax.tree.leaves(mask))
        1
    """
    mask = _selected(params, trainable)
    _check_declared(params, mask)
    return mask


def _selected(params, trainable):
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
    return jax.tree_util.tree_map_with_path(lambda path, x: _to_free(params, path, x), chosen)


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
