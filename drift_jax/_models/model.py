"""The drift-model interface: what every model kind provides to the filter, the losses, the
fit, the simulator, the config file and the streaming estimator.

``dj.AbstractDriftModel`` is the abstract base (equinox's abstract/final pattern, as
diffrax's ``AbstractSolver``); ``dj.KalmanModel`` and ``dj.IMMModel`` are its concrete,
final implementations, and a new model kind (e.g. continuous-time regimes) plugs in by
implementing it. Code that works with "a model" calls these methods instead of asking
which class it holds.

Conventions. A model has ``num_regimes`` regimes, ``M >= 1``; a ``dj.KalmanModel`` is the
one-regime case: ``regime_names == ("Kalman",)``, transition matrix ``[[1.0]]``, regime
probabilities ``[1.0]`` at every step, and no crisis regime: ``crisis_index == -1`` (as
``dj.Paths.crisis_index``), so ``P(Crisis) = 0`` and ``sigma_effective = sigma``.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox import AbstractClassVar, AbstractVar

from .._core import validate as v
from .._core.types import Array, Float, Scalar
from .dynamics import AbstractDynamics, embedded_transition, stacked_transitions
from .observation import Observation
from .risk import sigma_effective as _sigma_effective

__all__ = ["AbstractDriftModel", "AbstractFilterResult", "check_model"]


class AbstractDriftModel(eqx.Module):
    """A drift model observed through features (abstract): the interface of every model kind.

    Attributes (fields or properties of a concrete model):
        observation: the shared ``dj.Observation`` (``m`` features).
        init_mean, init_cov: the state prior before the first step (``[n]``, ``[n, n]``).
        regime_names: one name per regime (``("Kalman",)`` for a single model).
        crisis_index: index of the crisis regime, or ``-1`` when there is none.
        kind: the model kind's name, a config file's ``kind`` (``"kalman"``, ``"imm"``).
        supports_associative_scan: whether ``dj.Associative()`` can run it.

    Methods every model implements: ``state_dim``, ``regime_dynamics``,
    ``transition_matrix``, ``initial_regime_probs``, ``default_adjoint``,
    ``sequential_filter`` (the filter scan), ``initial_state`` / ``cycle`` /
    ``state_moments`` / ``state_regime_probs`` (one step at a time, for the streaming
    estimators). The rest (``num_regimes``, ``num_features``, ``dtype``, ``transitions``,
    ``stacked_transitions``) follow from them.
    """

    observation: AbstractVar[Observation]
    init_mean: AbstractVar[Float[Array, " n"]]
    init_cov: AbstractVar[Float[Array, "n n"]]
    regime_names: AbstractVar[tuple[str, ...]]
    crisis_index: AbstractVar[int]
    kind: AbstractClassVar[str]
    supports_associative_scan: ClassVar[bool] = False

    # --- sizes -----------------------------------------------------------------------------

    @property
    def num_regimes(self) -> int:
        """``M``, the number of regimes (1 for a single model)."""
        return len(self.regime_names)

    @property
    @abc.abstractmethod
    def state_dim(self) -> int:
        """``n``, the size of the (common) state: 1 for ``[mu]``, 2 for ``[mu, mu_dot]``."""

    @property
    def num_features(self) -> int:
        """``m``, the number of observed features."""
        return self.observation.num_features

    @property
    def dtype(self):
        """The model's floating dtype (the filter's precision)."""
        return self.init_mean.dtype

    # --- the generative model ---------------------------------------------------------------

    @property
    @abc.abstractmethod
    def regime_dynamics(self) -> tuple[AbstractDynamics, ...]:
        """One ``dj.OU`` / ``dj.OUAccel`` per regime, in ``regime_names`` order."""

    @abc.abstractmethod
    def transition_matrix(self, dt=None) -> Float[Array, "M M"]:
        """``Pi[i, j] = P(next regime = j | now = i)`` for a step of ``dt`` seconds
        (``[[1.0]]`` for a single model; ``dt`` is for continuous-time regimes)."""

    @property
    def transition_depends_on_dt(self) -> bool:
        """Whether ``transition_matrix(dt)`` changes with ``dt`` (continuous-time regimes);
        ``False``: one matrix per cycle, whatever the step length."""
        return False

    def transition_matrices(self, dt) -> Float[Array, "*T M M"]:
        """``transition_matrix`` for a scalar ``dt`` (``[M, M]``) or each step of ``dt``
        ``[T]`` (``[T, M, M]``; one ``[M, M]`` when it does not depend on ``dt``): what the
        filter's scan reads."""
        if jnp.ndim(dt) == 0 or not self.transition_depends_on_dt:
            return self.transition_matrix(dt if jnp.ndim(dt) == 0 else None)
        return jax.vmap(self.transition_matrix)(dt)

    @property
    @abc.abstractmethod
    def initial_regime_probs(self) -> Float[Array, " M"]:
        """Regime probabilities before the first step (``[1.0]`` for a single model)."""

    def transitions(self, dt) -> tuple[list, list]:
        """Per-regime ``(F_j, Q_j)`` for one step of ``dt`` seconds, each in the common
        state (a scalar member of an extended model is embedded, ``mu_dot`` reset to 0)."""
        n = self.state_dim
        pairs = [embedded_transition(d, dt, n) for d in self.regime_dynamics]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def stacked_transitions(self, dts) -> tuple[list, list]:
        """Per-regime ``(F_j [T, n, n], Q_j [T, n, n])`` for every step length in ``dts``."""
        n = self.state_dim
        pairs = [stacked_transitions(d, dts, n) for d in self.regime_dynamics]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def initial_prior_fields(self) -> tuple[str, ...]:
        """Names of the fields holding the prior before the first step (``dj.fit`` holds
        them fixed by default: one observation's worth of information)."""
        return ("init_mean", "init_cov")

    # --- filtering ------------------------------------------------------------------------

    @abc.abstractmethod
    def default_adjoint(self):
        """The reverse pass ``dj.Sequential()`` uses for this model (a ``dj.*Adjoint``)."""

    def sequential_filter(self, zs, dt, adjoint) -> "AbstractFilterResult":
        """The sequential filter on checked inputs: ``zs`` ``[T, m]`` in the model's dtype,
        ``dt`` a scalar or ``[T]``; ``adjoint`` a ``dj.*Adjoint`` (``dj.filter`` calls it)."""
        return self.filter_from(None, zs, dt, adjoint)[0]

    @abc.abstractmethod
    def filter_from(self, state, zs, dt, adjoint) -> tuple["AbstractFilterResult", object]:
        """The sequential filter started from ``state`` (a state of ``initial_state``'s
        type; ``None``: the model's prior before the first step, exactly): ``(result,
        state after the last step)``. What ``dj.Chunked`` runs on each chunk; the result's
        ``log_likelihood`` is the sum over these steps only."""

    def associative_filter(self, zs, dt) -> "AbstractFilterResult":
        """The parallel-in-time filter (``dj.Associative()``), where the model has one."""
        raise ValueError(
            f"method=dj.Associative() is not available for a {type(self).__name__}; use "
            "dj.Sequential()."
        )

    # --- one step at a time (the streaming estimators) -------------------------------------

    @abc.abstractmethod
    def initial_state(self):
        """The filter's state before the first step (a ``dj.KalmanState`` /
        ``dj.IMMState``)."""

    @abc.abstractmethod
    def cycle(self, state, z, dt, observation=None) -> tuple:
        """One step of the filter's own cycle: ``(new state, log p(z | past))``.

        Arguments:
            state: the state after the last step.
            z: ``[k]`` observations (NaN = missing).
            dt: the step length (seconds, a scalar).
            observation: ``None`` (the model's own features, ``k = m``) or ``(H [k, n],
                R [k, k], update)``, an observation model for this step only.
        """

    @abc.abstractmethod
    def state_moments(self, state) -> tuple:
        """``(mean [n], cov [n, n])`` of the state's drift estimate (IMM: the mixture)."""

    @abc.abstractmethod
    def state_regime_probs(self, state) -> Float[Array, " M"]:
        """The state's regime probabilities (``[1.0]`` for a single model)."""


class AbstractFilterResult(eqx.Module):
    """What ``dj.filter`` returns (abstract): per-step outputs with a leading axis ``T``.

    A result of ``jax.vmap(dj.filter)`` has a leading batch axis on every field; the
    properties keep it (``drift`` is then ``[B, T]``). Every result has
    ``log_likelihood``, ``log_likelihoods`` ``[T]``, ``means`` ``[T, n]``, ``covs``
    ``[T, n, n]``, ``regime_probs`` ``[T, M]`` (``[T, 1]`` of ones for a single model),
    ``crisis_index`` (``-1``: none) and, from them, ``drift``, ``drift_var``,
    ``p_crisis`` (0 without a crisis regime) and ``sigma_effective``.
    """

    log_likelihood: AbstractVar[Scalar]
    log_likelihoods: AbstractVar[Float[Array, " T"]]
    means: AbstractVar[Float[Array, "T n"]]
    covs: AbstractVar[Float[Array, "T n n"]]
    regime_probs: AbstractVar[Float[Array, "T M"]]
    crisis_index: AbstractVar[int]

    @property
    def drift(self) -> Float[Array, "*batch T"]:
        """Filtered drift ``E[mu_t | z_<=t]`` (bps/s); for an IMM the mixture
        ``sum_j w_j mu_j``."""
        return self.means[..., 0]

    @property
    def drift_var(self) -> Float[Array, "*batch T"]:
        """Filtered drift variance ``Var[mu_t | z_<=t]``; for an IMM the mixture variance
        ``sum_j w_j (P_j + (mu_j - mu)^2)``."""
        return self.covs[..., 0, 0]

    @property
    def p_crisis(self) -> Float[Array, "*batch T"]:
        """``P_t(Crisis)``: the crisis regime's probability, 0 when there is none."""
        if self.crisis_index < 0:
            return jnp.zeros_like(self.drift)
        return self.regime_probs[..., self.crisis_index]

    def sigma_effective(self, sigma, crisis_amplifier=2.0) -> Float[Array, "*batch T"]:
        """``sigma * (1 + crisis_amplifier * P(Crisis))`` per step (``sigma`` without a
        crisis regime)."""
        return _sigma_effective(sigma, self.p_crisis, crisis_amplifier)


def check_model(model, name: str = "model") -> None:
    """Raise a ``TypeError`` (``ArgumentTypeError``) naming the argument unless ``model``
    is a drift model."""
    v.instance(
        name,
        model,
        AbstractDriftModel,
        "a dj.KalmanModel or dj.IMMModel (a dj.AbstractDriftModel)",
    )
