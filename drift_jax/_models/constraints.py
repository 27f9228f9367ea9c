"""Constraints declared on the fields of a model: the valid values, and free coordinates.

A model's array field says what values it may take in its declaration::

    class OU(dj.AbstractDynamics):
        theta: Float[Array, ""] = eqx.field(metadata={"constraint": dj.NonNegative()})

and everything that needs to know reads it from there (``dataclasses.fields`` of the
Module), never from the field's name: ``dj.unconstrain`` / ``dj.constrain`` (what
``dj.fit`` trains, in which coordinates), ``dj.standard_errors`` (which parameters are
reported, and on which scale their intervals are formed) and the config reader (which
values are valid). A new dynamics class declares its fields and is trained, reported and
checked like the built-in ones.

Each constraint maps a concrete value onto its free coordinates (``to_free``) and back,
valid by construction (``from_free``); the two are inverse up to rounding. A field with
no declared constraint is never trained: selecting it in ``trainable`` is a
``ValueError`` that says how to declare one (it is not guessed from the name).

- ``Real()``: finite; free coordinate ``x``; interval linear.
- ``Positive()``: ``x > 0``; ``log x``; log scale.
- ``NonNegative()``: ``x >= 0``; ``log x`` (so a trained value starts > 0); log scale.
- ``LowerCholesky()``: lower triangular with a positive diagonal; its ``n (n + 1) / 2``
  lower-triangular entries with the diagonal logged; log scale on the diagonal, linear
  below it. ``reported_as="cov"`` reports ``L L^T`` under that name.
- ``PositiveDefinite()``: symmetric positive definite; its Cholesky factor, as above;
  reported by its own entries.
- ``Simplex()``: a probability vector; ``log(p_j / p_ref)`` for ``j != ref``; logit scale.
- ``SimplexRows()``: a row-stochastic matrix; each row as ``Simplex``.
- ``Generator()``: a continuous-time chain's generator (``rates``, per second); the logs
  of its off-diagonal rates; log scale (reported with the expected durations
  ``-1 / Q[j, j]``).

A simplex is parametrised relative to a reference entry per row (the largest entry of the
starting value, usually ``Pi``'s diagonal): its logit is held at 0, so there is no flat
direction (a softmax over all ``M`` logits is invariant to adding a constant to a row) and
the free coordinates have full rank, which a Hessian needs. A Cholesky factor keeps only
its ``n (n + 1) / 2`` lower-triangular entries for the same reason. An entry of a
probability vector that starts at exactly 0 has logit ``-inf`` and stays exactly 0 (a
structural zero: its gradient is 0).

A ``NonNegative`` field (``theta >= 0``, ``crisis_amplifier >= 0``) is trained in log
coordinates, so a trainable one must start above 0; ``theta = 0`` (a random walk) is held
at 0 by leaving it out of ``trainable``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core.types import Array

#: The key of a field's ``metadata`` that holds its constraint.
CONSTRAINT = "constraint"


def _index(idx: tuple[int, ...]) -> str:
    return "[" + ",".join(str(i) for i in idx) + "]" if idx else ""


class AbstractConstraint(eqx.Module):
    """The set of valid values of a field, and free coordinates that cover it.

    Concrete constraints are final; each knows its transform (``to_free`` /
    ``from_free``), its validity check (``is_valid``, described by ``allowed``), how its
    field is reported by ``dj.standard_errors`` (``reported``, ``describe``) and the
    scale of the intervals (``scale``: ``"linear"``, ``"log"`` or ``"logit"``).

    Example:
        >>> import drift_jax as dj, jax.numpy as jnp
        >>> rows = dj.SimplexRows()
        >>> raw, ref = rows.to_free(jnp.asarray([[0.9, 0.1], [0.2, 0.8]]), "Pi", ".transition")
        >>> raw.shape, ref  # one free logit per row, against each row's largest entry
        ((2, 1), (0, 1))
        >>> rows.is_valid(rows.from_free(raw + 3.0, (2, 2), ref)), rows.scale
        (True, 'logit')
    """

    allowed: eqx.AbstractClassVar[str]
    scale: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def is_valid(self, x) -> bool:
        """Whether the concrete value ``x`` satisfies the constraint."""

    @abc.abstractmethod
    def to_free(self, x: Array, name: str, where: str) -> tuple[Array, tuple[int, ...]]:
        """Free coordinates of the concrete value ``x`` and static data of the map back
        (the reference entries of a simplex; ``()`` otherwise).

        ``name`` (the field) and ``where`` (its path) name it in the ``ValueError``
        raised when ``x`` cannot be trained from (e.g. a positive field at 0).
        """

    @abc.abstractmethod
    def from_free(self, raw: Array, shape: tuple[int, ...], ref: tuple[int, ...]) -> Array:
        """The field of shape ``shape`` at the free coordinates ``raw`` (traceable)."""

    def reported(self, value: Array) -> Array:
        """The parameters ``dj.standard_errors`` reports for the field ``value``, flat."""
        return value.reshape(-1)

    def describe(
        self, name: str, shape: tuple[int, ...], ref: tuple[int, ...]
    ) -> tuple[list[str], list[str], list[str]]:
        """Names and interval scales of the reported parameters, and names of the free
        coordinates, for the field called ``name`` (``dynamics[2].sigma``)."""
        reported = [name + _index(idx) for idx in np.ndindex(*shape)]
        return reported, [self.scale] * len(reported), self._free_names(reported)

    def _free_names(self, reported: list[str]) -> list[str]:
        return list(reported)


class Real(AbstractConstraint):
    """Any finite value; the free coordinate is the value itself (loadings, means)."""

    allowed: ClassVar[str] = "finite"
    scale: ClassVar[str] = "linear"

    def is_valid(self, x) -> bool:
        return bool(np.all(np.isfinite(np.asarray(x))))

    def to_free(self, x: Array, name: str, where: str) -> tuple[Array, tuple[int, ...]]:
        return x, ()

    def from_free(self, raw: Array, shape: tuple[int, ...], ref: tuple[int, ...]) -> Array:
        return raw


class _AbstractLog(AbstractConstraint):
    """Free coordinate ``log x``: a positive image; a trainable value must start > 0."""

    def to_free(self, x: Array, name: str, where: str) -> tuple[Array, tuple[int, ...]]:
        xn = np.asarray(x)
        if not np.all(np.isfinite(xn) & (xn > 0)):
            raise ValueError(
                f"`{name}` ({where}) is trainable but equals {xn.tolist()}: it is trained in log "
                f"coordinates and must start > 0. Start it from a positive value, or leave "
                f"it out of `trainable` to hold it fixed (e.g. theta = 0, a random walk)."
            )
        return jnp.log(x), ()

    def from_free(self, raw: Array, shape: tuple[int, ...], ref: tuple[int, ...]) -> Array:
        return jnp.exp(raw)

    def _free_names(self, reported: list[str]) -> list[str]:
        return [f"log({r})" for r in reported]


class Positive(_AbstractLog):
    """``x > 0`` (a volatility such as ``sigma_base``); trained as ``log x``."""

    allowed: ClassVar[str] = "finite and > 0"
    scale: ClassVar[str] = "log"

    def is_valid(self, x) -> bool:
        x = np.asarray(x)
        return bool(np.all(np.isfinite(x) & (x > 0)))


class NonNegative(_AbstractLog):
    """``x >= 0`` (``theta``, where 0 is a random walk; ``crisis_amplifier``).

    Trained as ``log x``, so a trainable value must start ``> 0``; a 0 is held fixed.
    """

    allowed: ClassVar[str] = "finite and >= 0"
    scale: ClassVar[str] = "log"

    def is_valid(self, x) -> bool:
        x = np.asarray(x)
        return bool(np.all(np.isfinite(x) & (x >= 0)))


class _AbstractCholesky(AbstractConstraint):
    """Free coordinates: the ``n (n + 1) / 2`` lower-triangular entries of a Cholesky
    factor, the diagonal logged."""

    scale: ClassVar[str] = "log"  # of the diagonal; the entries below it are linear

    @abc.abstractmethod
    def _factor(self, x: Array) -> Array:
        """The lower Cholesky factor held by, or of, the value ``x``."""

    @abc.abstractmethod
    def _from_factor(self, L: Array) -> Array:
        """The value whose factor is ``L``."""

    def to_free(self, x: Array, name: str, where: str) -> tuple[Array, tuple[int, ...]]:
        L = self._factor(x)
        rows, cols = np.tril_indices(x.shape[-1])
        packed = L[rows, cols]
        diag = np.asarray(packed)[rows == cols]
        if not np.all(np.isfinite(diag) & (diag > 0)):
            raise ValueError(
                f"`{name}` ({where}) must have a Cholesky factor with a positive diagonal to "
                f"be trained; got {name}={np.asarray(x).tolist()}."
            )
        on_diag = jnp.asarray(rows == cols)
        return jnp.where(on_diag, jnp.log(jnp.where(on_diag, packed, 1.0)), packed), ()

    def from_free(self, raw: Array, shape: tuple[int, ...], ref: tuple[int, ...]) -> Array:
        rows, cols = np.tril_indices(shape[-1])
        on_diag = jnp.asarray(rows == cols)
        # exp only on the diagonal: an overflowing untaken branch would poison the gradient
        packed = jnp.where(on_diag, jnp.exp(jnp.where(on_diag, raw, 0.0)), raw)
        L = jnp.zeros(shape, raw.dtype).at[rows, cols].set(packed)
        return self._from_factor(L)

    def _reported_matrix(self, value: Array) -> Array:
        return value

    def reported(self, value: Array) -> Array:
        rows, cols = np.tril_indices(value.shape[-1])
        return self._reported_matrix(value)[rows, cols]

    def _reported_name(self, name: str) -> str:
        return name

    def _factor_name(self, name: str) -> str:
        return name

    def describe(
        self, name: str, shape: tuple[int, ...], ref: tuple[int, ...]
    ) -> tuple[list[str], list[str], list[str]]:
        base, chol = self._reported_name(name), self._factor_name(name)
        pairs = list(zip(*np.tril_indices(shape[-1]), strict=True))
        reported = [f"{base}[{i},{j}]" for i, j in pairs]
        scales = ["log" if i == j else "linear" for i, j in pairs]
        raw = [f"log({chol}[{i},{j}])" if i == j else f"{chol}[{i},{j}]" for i, j in pairs]
        return reported, scales, raw


class LowerCholesky(_AbstractCholesky):
    """A lower-triangular factor ``L`` with a positive diagonal (``R = L L^T``).

    Arguments:
        reported_as: the name (a sibling of the field: ``Observation.cov`` for
            ``cov_chol``) under which ``dj.standard_errors`` reports the entries of
            ``L L^T``; ``None`` reports the entries of ``L`` itself.
    """

    reported_as: str | None = eqx.field(static=True, default=None)
    allowed: ClassVar[str] = "lower triangular with a positive diagonal (and finite)"

    def is_valid(self, x) -> bool:
        L = np.asarray(x)
        if L.ndim != 2 or L.shape[0] != L.shape[1]:
            return False
        finite = np.all(np.isfinite(L))
        return bool(finite and np.all(np.triu(L, 1) == 0) and np.all(np.diag(L) > 0))

    def _factor(self, x: Array) -> Array:
        return jnp.tril(x)

    def _from_factor(self, L: Array) -> Array:
        return L

    def _reported_matrix(self, value: Array) -> Array:
        return value if self.reported_as is None else value @ value.T

    def _reported_name(self, name: str) -> str:
        if self.reported_as is None:
            return name
        parent, dot, _ = name.rpartition(".")
        return parent + dot + self.reported_as


class PositiveDefinite(_AbstractCholesky):
    """A symmetric positive definite matrix (a prior covariance), trained through the
    free coordinates of its Cholesky factor and reported by its own entries."""

    allowed: ClassVar[str] = "symmetric positive definite"

    def is_valid(self, x) -> bool:
        S = np.asarray(x, dtype=np.float64)
        if S.ndim != 2 or S.shape[0] != S.shape[1] or not np.all(np.isfinite(S)):
            return False
        if np.max(np.abs(S - S.T), initial=0.0) > 1e-8 * (1.0 + np.max(np.abs(S), initial=0.0)):
            return False
        try:
            np.linalg.cholesky(0.5 * (S + S.T))
        except np.linalg.LinAlgError:
            return False
        return True

    def _factor(self, x: Array) -> Array:
        return jnp.linalg.cholesky(x)

    def _from_factor(self, L: Array) -> Array:
        return L @ L.T

    def _factor_name(self, name: str) -> str:
        return f"chol({name})"


class _AbstractSimplex(AbstractConstraint):
    """Free coordinates ``log(p_j / p_ref)``, ``j != ref``, per probability vector."""

    scale: ClassVar[str] = "logit"

    @abc.abstractmethod
    def _ndim(self) -> int:
        """1 for a probability vector, 2 for a matrix of them (rows)."""

    def is_valid(self, x) -> bool:
        P = np.asarray(x)
        if P.ndim != self._ndim() or not np.all(np.isfinite(P)) or not np.all(P >= 0):
            return False
        tol = 1e-5 if P.dtype == np.float32 else 1e-9
        return bool(np.all(np.abs(np.sum(P.astype(np.float64), axis=-1) - 1.0) <= tol))

    def to_free(self, x: Array, name: str, where: str) -> tuple[Array, tuple[int, ...]]:
        shape = x.shape
        P = np.asarray(x).reshape(-1, shape[-1])
        ref = tuple(int(i) for i in np.argmax(P, axis=-1))
        rows = x.reshape(-1, shape[-1])
        logs = []
        for i, r in enumerate(ref):
            lr = jnp.log(rows[i]) - jnp.log(rows[i, r])
            logs.append(jnp.concatenate([lr[:r], lr[r + 1 :]]))
        raw = jnp.stack(logs)
        return (raw[0] if x.ndim == 1 else raw), ref

    def from_free(self, raw: Array, shape: tuple[int, ...], ref: tuple[int, ...]) -> Array:
        # the reference entry's logit is 0, the others are free
        M = shape[-1]
        rows = raw.reshape(len(ref), M - 1)
        full = []
        for i, r in enumerate(ref):
            zero = jnp.zeros((1,), raw.dtype)
            full.append(jnp.concatenate([rows[i, :r], zero, rows[i, r:]]))
        return jax.nn.softmax(jnp.stack(full).reshape(shape), axis=-1)

    def describe(
        self, name: str, shape: tuple[int, ...], ref: tuple[int, ...]
    ) -> tuple[list[str], list[str], list[str]]:
        reported = [name + _index(idx) for idx in np.ndindex(*shape)]
        raw = []
        for row, r in enumerate(ref):
            lead = (row,) if len(shape) == 2 else ()
            for j in range(shape[-1]):
                if j != r:
                    raw.append(f"log({name}{_index((*lead, j))}/{name}{_index((*lead, r))})")
        return reported, [self.scale] * len(reported), raw


class Simplex(_AbstractSimplex):
    """A probability vector (``init_probs``): entries ``>= 0`` summing to 1."""

    allowed: ClassVar[str] = "a probability vector: finite, >= 0, summing to 1"

    def _ndim(self) -> int:
        return 1


class SimplexRows(_AbstractSimplex):
    """A row-stochastic matrix (``Pi``): each row a probability vector; a 0 stays 0."""

    allowed: ClassVar[str] = "row-stochastic: finite, >= 0, each row summing to 1"

    def _ndim(self) -> int:
        return 2


class Generator(AbstractConstraint):
    """A generator of a continuous-time Markov chain (``rates``, per second): finite,
    off-diagonals ``>= 0``, each row summing to 0 (``Q[i, i] = -sum_{j != i} Q[i, j]``).

    Free coordinates: the logs of the ``M (M - 1)`` off-diagonal rates, row by row (the
    diagonal follows from them, so there is no redundant direction). A rate that starts at
    exactly 0 has log ``-inf`` and stays exactly 0 (a structural zero, as a simplex's).
    ``dj.standard_errors`` reports the off-diagonal rates (``rates[i,j]``, 1/s) and the
    expected durations ``-1 / Q[j, j]`` (seconds, ``expected_duration[j]``, a sibling of
    the field), all on the log scale.

    Example:
        >>> import drift_jax as dj, jax.numpy as jnp
        >>> g = dj.Generator()
        >>> raw, ref = g.to_free(jnp.asarray([[-0.5, 0.5], [2.0, -2.0]]), "rates", ".rates")
        >>> raw.shape  # log off-diagonal rates, one row per regime
        (2, 1)
        >>> Q = g.from_free(raw, (2, 2), ref)
        >>> Q.tolist(), g.reported(Q).tolist()  # rates, then durations -1/Q[j, j]
        ([[-0.5, 0.5], [2.0, -2.0]], [0.5, 2.0, 2.0, 0.5])
    """

    allowed: ClassVar[str] = (
        "a generator (rates per second): finite, off-diagonals >= 0, each row summing to 0"
    )
    scale: ClassVar[str] = "log"

    @staticmethod
    def row_tolerance(dtype) -> float:
        """Relative tolerance of a row sum (times ``max(1, max |Q[i, :]|)``)."""
        return 1e-5 if np.dtype(dtype) == np.float32 else 1e-9

    def is_valid(self, x) -> bool:
        Q = np.asarray(x)
        if Q.ndim != 2 or Q.shape[0] != Q.shape[1] or not np.all(np.isfinite(Q)):
            return False
        off = ~np.eye(Q.shape[0], dtype=bool)
        if not np.all(Q[off] >= 0):
            return False
        Q64 = Q.astype(np.float64)
        scale = np.maximum(1.0, np.max(np.abs(Q64), axis=1))
        return bool(np.all(np.abs(Q64.sum(axis=1)) <= self.row_tolerance(Q.dtype) * scale))

    def to_free(self, x: Array, name: str, where: str) -> tuple[Array, tuple[int, ...]]:
        M = x.shape[-1]
        off = ~np.eye(M, dtype=bool)
        Qn = np.asarray(x)
        if not (np.all(np.isfinite(Qn)) and np.all(Qn[off] >= 0)):
            raise ValueError(
                f"`{name}` ({where}) is trainable but is not a generator: off-diagonal "
                f"rates must be finite and >= 0 (trained as their logs); got "
                f"{name}={Qn.tolist()}."
            )
        rows = [jnp.concatenate([x[i, :i], x[i, i + 1 :]]) for i in range(M)]
        return _safe_log(jnp.stack(rows)), ()

    def from_free(self, raw: Array, shape: tuple[int, ...], ref: tuple[int, ...]) -> Array:
        M = shape[-1]
        rates = jnp.exp(raw.reshape(M, M - 1))
        rows = []
        for i in range(M):
            out = rates[i]
            diag = -jnp.sum(out, keepdims=True)
            rows.append(jnp.concatenate([out[:i], diag, out[i:]]))
        return jnp.stack(rows)

    def reported(self, value: Array) -> Array:
        M = value.shape[-1]
        off = np.nonzero(~np.eye(M, dtype=bool))
        d = jnp.diagonal(value)
        leaving = d < 0
        duration = jnp.where(leaving, -1.0 / jnp.where(leaving, d, -1.0), jnp.inf)
        return jnp.concatenate([value[off], duration])

    def describe(
        self, name: str, shape: tuple[int, ...], ref: tuple[int, ...]
    ) -> tuple[list[str], list[str], list[str]]:
        M = shape[-1]
        pairs = [(i, j) for i in range(M) for j in range(M) if i != j]
        parent, dot, _ = name.rpartition(".")
        rates = [f"{name}[{i},{j}]" for i, j in pairs]
        durations = [f"{parent}{dot}expected_duration[{j}]" for j in range(M)]
        reported = rates + durations
        return reported, [self.scale] * len(reported), [f"log({r})" for r in rates]


def _safe_log(x):
    """``log x`` with ``log 0 = -inf`` (a structural zero) and no NaN in the gradient."""
    pos = x > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, x, 1.0)), -jnp.inf)


# --- reading the declarations ------------------------------------------------------------


def field_constraint(module, name: str) -> AbstractConstraint | None:
    """The constraint declared on the field ``name`` of ``module`` (a Module or its
    class), or ``None`` when it declares none."""
    for f in dataclasses.fields(module):
        if f.name == name:
            return f.metadata.get(CONSTRAINT)
    raise ValueError(f"{_type_name(module)} has no field `{name}`.")


def constrained_fields(module) -> tuple[tuple[str, AbstractConstraint], ...]:
    """``(name, constraint)`` of every field of ``module`` (a Module or its class) that
    declares a constraint, in declaration order."""
    return tuple(
        (f.name, f.metadata[CONSTRAINT])
        for f in dataclasses.fields(module)
        if CONSTRAINT in f.metadata
    )


def _type_name(module) -> str:
    return (module if isinstance(module, type) else type(module)).__name__


def leaf_constraint(tree, path) -> tuple[AbstractConstraint | None, str, str]:
    """The constraint of the leaf of ``tree`` at ``path`` (a key path from
    ``jax.tree_util``): that of the innermost dataclass field on the path.

    Returns ``(constraint or None, field name, owner)`` with ``owner`` the class that
    declares the field (``"OU"``); the name and owner are the path's last attribute and
    ``""`` when no dataclass is on the path.
    """
    node, found, name, owner = tree, None, jax.tree_util.keystr(path), ""
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            if dataclasses.is_dataclass(node) and not isinstance(node, type):
                found = field_constraint(node, entry.name)
                owner = type(node).__name__
            name = entry.name
            node = getattr(node, entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            node = node[entry.idx]
        elif isinstance(entry, jax.tree_util.DictKey):
            node = node[entry.key]
        else:  # a custom pytree node: its children cannot be looked up by key
            break
    return found, name, owner


def undeclared_error(name: str, where: str, owner: str) -> ValueError:
    """The error for a trainable leaf whose field declares no constraint."""
    field = f"{owner}.{name}" if owner else f"`{name}`"
    return ValueError(
        f"`{name}` ({where}) is trainable, but the field {field} declares no constraint, "
        f"so drift_jax does not know its free coordinates. Declare one on the field, e.g. "
        f'`{name}: Float[Array, ""] = eqx.field(metadata={{"constraint": dj.Positive()}})` '
        f"(dj.Real, dj.Positive, dj.NonNegative, dj.LowerCholesky, dj.PositiveDefinite, "
        f"dj.Simplex, dj.SimplexRows, dj.Generator), or leave it out of `trainable` to hold "
        f"it fixed."
    )
