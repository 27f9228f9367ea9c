"""Drift dynamics: the OU drift ``[mu]`` and the extended state ``[mu, mu_dot]``.

Each dynamics maps a step length ``dt`` to the linear-Gaussian transition
``x_{t} = F x_{t-1} + w``, ``w ~ N(0, Q)`` through ``transition(dt) -> (F, Q)``.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .._core import validate as v
from .._core.types import Array, Float, Scalar, ScalarLike, StateMatrix
from .constraints import CONSTRAINT, NonNegative

_DISCRETISATIONS = ("euler", "exact")


def _expm1_ratio(x: Array) -> Array:
    """``(1 - exp(-x)) / x``, equal to 1 at ``x = 0`` with finite gradients there.

    The double ``where`` keeps the untaken branch free of ``0/0`` so gradients at and
    near ``x = 0`` (``theta = 0``, a random walk) are finite.
    """
    small = jnp.abs(x) < 1e-3
    safe = jnp.where(small, jnp.ones_like(x), x)
    exact = -jnp.expm1(-safe) / safe
    # Taylor series; the x^4/120 remainder is < 1e-14 for |x| < 1e-3.
    series = 1.0 - x / 2.0 + x * x / 6.0 - x * x * x / 24.0
    return jnp.where(small, series, exact)


class AbstractDynamics(eqx.Module):
    """Interface of a drift model: its state size and its discrete transition.

    A subclass sets ``state_dim``, holds a static ``discretisation`` string and defines
    ``transition(dt)`` and ``half_life``. Each array field declares its constraint,
    ``kappa: Float[Array, ""] = eqx.field(metadata={"constraint": dj.Positive()})``:
    that, not the field's name, decides how ``dj.fit`` trains it, how
    ``dj.standard_errors`` reports it and what values are valid (``_models/constraints.py``).
    """

    state_dim: eqx.AbstractClassVar[int]
    discretisation: eqx.AbstractVar[str]

    @property
    def dtype(self):
        """The floating dtype of the parameters (that of the first array field)."""
        return jax.tree.leaves(self)[0].dtype

    @abc.abstractmethod
    def transition(self, dt: ScalarLike) -> tuple[StateMatrix, StateMatrix]:
        """Return ``(F, Q)`` for a step of length ``dt`` seconds."""

    @property
    @abc.abstractmethod
    def half_life(self) -> Scalar:
        """Half-life of the drift ``mu`` in seconds (``inf`` when ``theta = 0``)."""


class OU(AbstractDynamics):
    """Ornstein-Uhlenbeck drift ``d mu = -theta mu dt + sigma dW`` (state ``[mu]``).

    Arguments:
        theta: mean-reversion rate (1/s), ``>= 0``; ``0`` is a random walk.
        sigma: diffusion of the drift (bps/s per sqrt(s)), ``>= 0``.
        discretisation: ``"euler"`` (the production filter's: ``F = exp(-theta dt)``,
            ``Q = sigma^2 dt``) or ``"exact"`` (``Q = sigma^2 (1 - exp(-2 theta dt)) /
            (2 theta)``).

    Example:
        >>> import drift_jax as dj
        >>> F, Q = dj.OU(theta=0.02, sigma=1.0).transition(0.1)
        >>> F.shape, Q.shape
        ((1, 1), (1, 1))
    """

    theta: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: NonNegative()})
    sigma: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: NonNegative()})
    discretisation: str = eqx.field(static=True)
    state_dim: ClassVar[int] = 1

    def __init__(self, theta: ScalarLike, sigma: ScalarLike, discretisation: str = "euler"):
        self.theta = v.scalar("theta", v.nonnegative("theta", theta))
        self.sigma = v.scalar("sigma", v.nonnegative("sigma", sigma))
        self.discretisation = v.one_of("discretisation", discretisation, _DISCRETISATIONS)

    def transition(self, dt: ScalarLike) -> tuple[StateMatrix, StateMatrix]:
        dt = jnp.asarray(dt, dtype=self.theta.dtype)
        a = jnp.exp(-self.theta * dt)
        if self.discretisation == "euler":
            q = self.sigma**2 * dt
        else:
            q = self.sigma**2 * dt * _expm1_ratio(2.0 * self.theta * dt)
        return a.reshape(1, 1), q.reshape(1, 1)

    @property
    def half_life(self) -> Scalar:
        return jnp.log(2.0) / self.theta


class OUAccel(AbstractDynamics):
    """Drift with acceleration, state ``[mu, mu_dot]``.

    ``d mu = (-theta mu + mu_dot) dt + sigma dW_1``,
    ``d mu_dot = -theta_accel mu_dot dt + sigma_accel dW_2``.

    Arguments:
        theta, sigma: reversion rate and diffusion of the drift ``mu``.
        theta_accel, sigma_accel: the same for the acceleration ``mu_dot``.
        discretisation: ``"euler"`` (``F = [[1 - theta dt, dt], [0, 1 - theta_a dt]]``,
            ``Q = diag(sigma^2 dt, sigma_a^2 dt)``, the specification's) or ``"exact"``
            (matrix exponential, process noise by Van Loan's method, Van Loan 1978).

    Example:
        >>> import drift_jax as dj
        >>> F, Q = dj.OUAccel(0.02, 1.0, 0.1, 0.5).transition(0.5)
        >>> F.shape
        (2, 2)
    """

    theta: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: NonNegative()})
    sigma: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: NonNegative()})
    theta_accel: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: NonNegative()})
    sigma_accel: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: NonNegative()})
    discretisation: str = eqx.field(static=True)
    state_dim: ClassVar[int] = 2

    def __init__(
        self,
        theta: ScalarLike,
        sigma: ScalarLike,
        theta_accel: ScalarLike,
        sigma_accel: ScalarLike,
        discretisation: str = "euler",
    ):
        self.theta = v.scalar("theta", v.nonnegative("theta", theta))
        self.sigma = v.scalar("sigma", v.nonnegative("sigma", sigma))
        self.theta_accel = v.scalar("theta_accel", v.nonnegative("theta_accel", theta_accel))
        self.sigma_accel = v.scalar("sigma_accel", v.nonnegative("sigma_accel", sigma_accel))
        self.discretisation = v.one_of("discretisation", discretisation, _DISCRETISATIONS)

    def drift_matrix(self) -> StateMatrix:
        """Continuous-time drift matrix ``A`` of ``dx = A x dt + L dW``."""
        zero = jnp.zeros_like(self.theta)
        return jnp.stack(
            [
                jnp.stack([-self.theta, jnp.ones_like(self.theta)]),
                jnp.stack([zero, -self.theta_accel]),
            ]
        )

    def transition(self, dt: ScalarLike) -> tuple[StateMatrix, StateMatrix]:
        dt = jnp.asarray(dt, dtype=self.theta.dtype)
        zero = jnp.zeros_like(dt)
        if self.discretisation == "euler":
            F = jnp.stack(
                [
                    jnp.stack([1.0 - self.theta * dt, dt]),
                    jnp.stack([zero, 1.0 - self.theta_accel * dt]),
                ]
            )
            Q = jnp.diag(jnp.stack([self.sigma**2 * dt, self.sigma_accel**2 * dt]))
            return F, Q
        # Van Loan (1978): expm([[-A, L L^T], [0, A^T]] dt) = [[., F^-1 Q], [0, F^T]].
        A = self.drift_matrix()
        LLt = jnp.diag(jnp.stack([self.sigma**2, self.sigma_accel**2]))
        block = jnp.block([[-A, LLt], [jnp.zeros_like(A), A.T]]) * dt
        E = jsl.expm(block)
        F = E[2:, 2:].T
        Q = F @ E[:2, 2:]
        return F, 0.5 * (Q + Q.T)

    @property
    def half_life(self) -> Scalar:
        return jnp.log(2.0) / self.theta


def embedded_transition(
    dynamics: AbstractDynamics, dt: ScalarLike, state_dim: int
) -> tuple[StateMatrix, StateMatrix]:
    """``transition(dt)`` of ``dynamics`` embedded in a state of size ``state_dim``.

    A scalar OU member inside an extended-state IMM becomes ``F = [[a, 0], [0, 0]]``,
    ``Q = diag(q, 0)``: its ``mu_dot`` is reset to 0 (docs/design.md, "Regimes").
    """
    F, Q = dynamics.transition(dt)
    n = dynamics.state_dim
    if n == state_dim:
        return F, Q
    if n > state_dim:
        raise ValueError(
            f"cannot embed a state of size {n} ({type(dynamics).__name__}) into size {state_dim}."
        )
    pad = ((0, state_dim - n), (0, state_dim - n))
    return jnp.pad(F, pad), jnp.pad(Q, pad)


def stacked_transitions(
    dynamics: AbstractDynamics, dts: Float[Array, " T"], state_dim: int | None = None
) -> tuple[Float[Array, "T n n"], Float[Array, "T n n"]]:
    """``(F_t, Q_t)`` for every step length in ``dts``."""
    n = dynamics.state_dim if state_dim is None else state_dim
    return jax.vmap(lambda d: embedded_transition(dynamics, d, n))(dts)
