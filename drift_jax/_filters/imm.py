"""Interacting Multiple Model (IMM) filter over drift regimes.

Each cycle runs the specification's five steps (Blom & Bar-Shalom 1988; Bar-Shalom, Li &
Kirubarajan 2001, sec. 11.6.6): (1) mixing, (2) each model's prediction, (3) each model's
Kalman update and likelihood ``L_j``, (4) Bayes update of the mode probabilities, (5) the
mixture output. Mode probabilities are carried as logs, so a probability or a ``Pi`` entry
of 0, or an observation 1e8 away, gives no underflow and no NaN.

The regimes are unrolled over the static ``M``: the carry holds one array per model, so
under ``vmap`` every operation is elementwise over the batch and XLA fuses the cycle
(docs/design.md, performance principles).

A scalar-state IMM runs the same cycle written for scalars (``_filters/imm_scalar.py``), which
shares with the general one here the state type (``IMMState``), the missing-data mask,
the m-feature reduction (``step_observations``) and the mixture (``combine``: both the
mixing's moments and step 5). ``dj.filter`` scans a cycle and the streaming estimator
runs one step of the same (``imm_cycle``).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core import exact_arithmetic as xa, validate as v
from .._core.inputs import prepare_dt, prepare_observations
from .._core.types import Array, DtLike, Float, ObsLike, RegimeVector, Scalar, TransitionMatrix
from .._models.constraints import (
    CONSTRAINT,
    Generator,
    PositiveDefinite,
    Real,
    Simplex,
    SimplexRows,
)
from .._models.dynamics import AbstractDynamics
from .._models.model import AbstractDriftModel, AbstractFilterResult
from .._models.observation import Observation, measurement_update
from .chunked import ChunkedInfo
from .kalman import initial_moments, predict
from .loop_choice import loop_kind, scalar_loop
from .methods import CheckpointAdjoint
from .reduction import reduce_features


def _check_distribution(name: str, p: Array, tol: float) -> Array:
    ok = lambda x: jnp.all(jnp.isfinite(x)) & jnp.all(x >= 0) & (jnp.abs(jnp.sum(x) - 1) <= tol)
    if v.is_traced(p):
        return eqx.error_if(p, ~ok(p), f"`{name}` must be a probability vector (>= 0, sum 1).")
    if not bool(ok(p)):
        raise ValueError(
            f"`{name}` must be a probability vector (finite, >= 0, summing to 1 within {tol:g}); "
            f"got {name}={np.asarray(p).tolist()} (sum {float(np.sum(np.asarray(p))):.12g})."
        )
    return p


def _check_stochastic(name: str, Pi: Array, tol: float) -> Array:
    def ok(x):
        rows = jnp.abs(jnp.sum(x, axis=1) - 1) <= tol
        return jnp.all(jnp.isfinite(x)) & jnp.all(x >= 0) & jnp.all(rows)

    if v.is_traced(Pi):
        return eqx.error_if(Pi, ~ok(Pi), f"`{name}` must be row-stochastic (>= 0, rows sum 1).")
    if not bool(ok(Pi)):
        P = np.asarray(Pi)
        raise ValueError(
            f"`{name}` must be row-stochastic: finite, >= 0, each row summing to 1 within "
            f"{tol:g} (Pi[i, j] = P(next = j | now = i)); got {name}={P.tolist()} "
            f"with row sums {P.sum(axis=1).tolist()}."
        )
    return Pi


def _check_generator(name: str, Q: Array) -> Array:
    """``Q`` if it is a generator (finite, off-diagonals >= 0, rows summing to 0 within
    ``dj.Generator.row_tolerance`` times ``max(1, max |Q[i, :]|)``)."""
    tol = Generator.row_tolerance(Q.dtype)
    M = Q.shape[0]
    off = ~jnp.eye(M, dtype=bool)

    def ok(x):
        scale = jnp.maximum(1.0, jnp.max(jnp.abs(x), axis=1))
        rows = jnp.abs(jnp.sum(x, axis=1)) <= tol * scale
        return jnp.all(jnp.isfinite(x)) & jnp.all(jnp.where(off, x >= 0, True)) & jnp.all(rows)

    if v.is_traced(Q):
        text = f"`{name}` must be a generator (off-diagonals >= 0, rows sum 0)."
        return eqx.error_if(Q, ~ok(Q), text)
    if not bool(ok(Q)):
        G = np.asarray(Q, dtype=np.float64)
        bad = [(i, j) for i in range(M) for j in range(M) if i != j and not G[i, j] >= 0]
        detail = f"; negative off-diagonal rates at {bad}" if bad else ""
        raise ValueError(
            f"`{name}` must be a generator of the regime chain, in rates per second: finite, "
            f"off-diagonals >= 0 (Q[i, j] = rate of i -> j), each row summing to 0 within "
            f"{tol:g} x max(1, max|Q[i, :]|) (Q[i, i] = -sum of the others); got "
            f"{name}={G.tolist()} with row sums {G.sum(axis=1).tolist()}{detail}."
        )
    return Q


def stationary_distribution(transition) -> np.ndarray:
    """Stationary distribution ``p = p Pi``, ``sum p = 1``, of a row-stochastic matrix, exactly.

    Computed in exact rational arithmetic from the float64 entries, then each entry is
    rounded correctly to float64, so the result is the same on every machine (README,
    "Reproducibility"): each row is divided by its exact sum (a row that sums to 1 only
    within rounding, e.g. ``[0.95, 0.04, 0.01]``, then sums to 1 exactly), and
    ``p (Pi - I) = 0``, ``sum p = 1`` is solved by Gauss-Jordan elimination over the
    rationals. Zeros in ``Pi`` are allowed: regimes that are left and never re-entered
    (transient) get probability 0, and a near-reducible chain (off-diagonals of 1e-12)
    is solved exactly. A chain with more than one closed class (a set of regimes it never
    leaves) has no unique stationary distribution: that is a ``ValueError``.

    Arguments:
        transition: ``Pi`` ``[M, M]``, ``Pi[i, j] = P(next = j | now = i)``: finite, >= 0,
            each row summing to 1 within 1e-9 (1e-5 for a float32 array), as
            ``dj.IMMModel`` requires. A NumPy or JAX array or nested lists (concrete).

    Returns:
        ``p`` ``[M]``, NumPy float64, ``>= 0``, summing to 1 within ``M`` ulps.

    Example:
        >>> import drift_jax as dj
        >>> dj.stationary_distribution([[0.9, 0.1], [0.5, 0.5]]).tolist()  # 5/6, 1/6
        [0.8333333333333334, 0.16666666666666666]
        >>> dj.stationary_distribution([[0.5, 0.5], [0.0, 1.0]]).tolist()  # 1 absorbs
        [0.0, 1.0]
    """
    if isinstance(transition, str) or transition is None:
        raise v.ArgumentTypeError(f"`transition` must be a matrix of numbers, got {transition!r}.")
    try:
        raw = np.asarray(transition)
        P = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise v.ArgumentTypeError(
            f"`transition` must be a matrix of numbers, got {type(transition).__name__}."
        ) from None
    if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] == 0:
        raise ValueError(f"`transition` must be a square matrix [M, M], got shape {P.shape}.")
    M = P.shape[0]
    tol = 1e-5 if raw.dtype == np.float32 else 1e-9
    rows = P.tolist()
    sums = [math.fsum(r) for r in rows]
    if not (np.all(np.isfinite(P)) and np.all(P >= 0) and all(abs(s - 1) <= tol for s in sums)):
        raise ValueError(
            f"`transition` must be row-stochastic: finite, >= 0, each row summing to 1 within "
            f"{tol:g} (Pi[i, j] = P(next = j | now = i)); got transition={rows} with row sums "
            f"{sums}."
        )
    # Closed classes of the chain (sets of regimes it never leaves), from the zero pattern.
    reach = []
    for i in range(M):
        seen, todo = {i}, [i]
        while todo:
            k = todo.pop()
            new = [j for j in range(M) if rows[k][j] > 0 and j not in seen]
            seen.update(new)
            todo += new
        reach.append(seen)
    closed = {frozenset(r) for i, r in enumerate(reach) if all(i in reach[j] for j in r)}
    if len(closed) > 1:
        sets = ["{" + ", ".join(map(str, sorted(c))) + "}" for c in sorted(closed, key=min)]
        shown = ", ".join(sets[:-1]) + " and " + sets[-1]
        raise ValueError(
            f"`transition` has {len(closed)} closed classes of regimes that the chain never "
            f"leaves ({shown}, counted from 0), so its stationary distribution is not unique "
            "(it depends on the starting regime); pass `init_probs` explicitly, or give Pi a "
            f"path between those classes. Got transition={rows}."
        )
    F = []  # Pi with each row divided by its exact sum: rows that sum to 1 exactly
    for r in rows:
        exact = [Fraction(x) for x in r]
        total = sum(exact)
        F.append([x / total for x in exact])
    # p (Pi - I) = 0: equation j is sum_i p_i (Pi[i, j] - [i == j]) = 0; then sum_i p_i = 1.
    A = [[F[i][j] - (i == j) for i in range(M)] for j in range(M)] + [[Fraction(1)] * M]
    p = xa.solve(A, [Fraction(0)] * M + [Fraction(1)])
    if p is None or min(p) < 0:  # pragma: no cover - excluded by the closed-class check
        raise ValueError(f"`transition` has no unique stationary distribution: {rows}.")
    return np.array([float(x) for x in p], dtype=np.float64)


class IMMModel(AbstractDriftModel):
    """A bank of drift models with Markov regime switching, observed through shared features.

    A ``dj.AbstractDriftModel`` with ``M`` regimes. Final: not meant to be subclassed.

    Arguments:
        dynamics: one dynamics per regime (``dj.OU`` / ``dj.OUAccel``, mixed allowed: a
            scalar member inside an extended IMM is embedded with ``mu_dot`` reset to 0).
        observation: the shared ``dj.Observation``.
        transition: ``Pi`` ``[M, M]``, row-stochastic, ``Pi[i, j] = P(next = j | now = i)``
            per cycle (whatever the step's ``dt``). Give this or ``rates``, not both.
        init_probs: regime probabilities before the first cycle ``[M]`` (default: uniform).
        init_mean, init_cov: shared state prior before the first cycle.
        regime_names: names for reports (default ``regime0..``).
        crisis_regime: name or index of the regime whose probability is ``P(Crisis)``
            (default: the one named "Crisis", else the last).
        embed: allow members of different state size (scalar inside extended). With
            ``embed=False`` unequal sizes are an error.
        rates: continuous-time regimes instead of ``transition``: a generator ``Q``
            ``[M, M]`` in rates per second (``Q[i, j] >= 0`` the rate of ``i -> j``, each
            row summing to 0 within 1e-9 x ``max(1, max|Q[i, :]|)``, 1e-5 in float32); a
            step of ``dt_k`` seconds then switches with ``Pi_k = expm(Q dt_k)``
            (``transition_matrix(dt)``), so the chain is the same process at any
            sampling, regular or not. ``1 / -Q[j, j]`` is regime ``j``'s expected
            duration (``expected_durations()``). ``dj.rates_from_transition`` reads a
            per-cycle ``Pi`` as rates. The model's ``transition`` field is then ``None``
            (a per-cycle model's ``rates`` is ``None``).

    Example:
        >>> import drift_jax as dj
        >>> imm = dj.IMMModel(
        ...     dynamics=(dj.OU(0.1, 0.3), dj.OU(0.005, 5.0)),
        ...     observation=dj.Observation.scalar(1.0),
        ...     transition=[[0.95, 0.05], [0.1, 0.9]],
        ...     init_probs=[0.9, 0.1],
        ... )
        >>> imm.num_regimes
        2
        >>> ct = dj.IMMModel(  # continuous time: a 20 s quiet spell, a 5 s crisis on average
        ...     dynamics=(dj.OU(0.1, 0.3), dj.OU(0.005, 5.0)),
        ...     observation=dj.Observation.scalar(1.0),
        ...     rates=[[-0.05, 0.05], [0.2, -0.2]],
        ... )
        >>> ct.transition_depends_on_dt, ct.expected_durations().tolist()
        (True, [20.0, 5.0])
        >>> [round(float(p), 6) for p in ct.transition_matrix(0.1)[0]]  # expm(Q 0.1), row 0
        [0.995062, 0.004938]
    """

    dynamics: tuple[AbstractDynamics, ...]
    observation: Observation
    transition: TransitionMatrix | None = eqx.field(metadata={CONSTRAINT: SimplexRows()})
    rates: TransitionMatrix | None = eqx.field(metadata={CONSTRAINT: Generator()})
    init_probs: RegimeVector = eqx.field(metadata={CONSTRAINT: Simplex()})
    init_mean: Float[Array, " n"] = eqx.field(metadata={CONSTRAINT: Real()})
    init_cov: Float[Array, "n n"] = eqx.field(metadata={CONSTRAINT: PositiveDefinite()})
    regime_names: tuple[str, ...] = eqx.field(static=True)
    crisis_index: int = eqx.field(static=True)

    def __init__(
        self,
        dynamics,
        observation,
        transition=None,
        init_probs=None,
        init_mean=0.0,
        init_cov=1.0,
        *,
        regime_names=None,
        crisis_regime=None,
        embed: bool = True,
        rates=None,
    ):
        dynamics = tuple(dynamics) if isinstance(dynamics, (list, tuple)) else (dynamics,)
        if not dynamics:
            raise ValueError("`dynamics` must hold at least one regime's dynamics, got none.")
        for k, d in enumerate(dynamics):
            v.instance(f"dynamics[{k}]", d, AbstractDynamics, "dj.OU or dj.OUAccel")
        sizes = [d.state_dim for d in dynamics]
        if len(set(sizes)) > 1 and not embed:
            raise ValueError(
                f"`dynamics` members have unequal state sizes {sizes}; pass embed=True to embed "
                "scalar members into the extended state (mu_dot reset to 0), or use members of "
                "one size."
            )
        v.instance("observation", observation, Observation, "a dj.Observation")
        M = len(dynamics)
        dtype = dynamics[0].dtype
        tol = 1e-9 if dtype == jnp.float64 else 1e-5
        if (transition is None) == (rates is None):
            given = "both" if rates is not None else "neither"
            raise ValueError(
                "`dj.IMMModel` needs exactly one regime chain: `transition` (Pi, per cycle) "
                f"or `rates` (a generator Q, per second, Pi_k = expm(Q dt_k)); got {given}."
            )
        name = "transition" if rates is None else "rates"
        chain = v.as_float_array(name, transition if rates is None else rates, dtype)
        if chain.shape != (M, M):
            raise ValueError(
                f"`{name}` must have shape [M, M] = [{M}, {M}] for {M} regimes "
                f"(one per `dynamics` member), got shape {chain.shape}."
            )
        if rates is None:
            self.transition, self.rates = _check_stochastic("transition", chain, tol), None
        else:
            self.transition, self.rates = None, _check_generator("rates", chain)
        if init_probs is None:
            init_probs = jnp.full((M,), 1.0 / M, dtype)
        p0 = v.as_float_array("init_probs", init_probs, dtype)
        if p0.shape != (M,):
            raise ValueError(f"`init_probs` must have shape [M] = [{M}], got shape {p0.shape}.")
        self.init_probs = _check_distribution("init_probs", p0, tol)
        self.dynamics = dynamics
        self.observation = observation
        n = max(sizes)
        self.init_mean, self.init_cov = initial_moments(init_mean, init_cov, n, dtype)
        names = (
            tuple(f"regime{k}" for k in range(M)) if regime_names is None else tuple(regime_names)
        )
        if len(names) != M:
            raise ValueError(f"`regime_names` must have {M} names, got {len(names)}: {names}.")
        self.regime_names = names
        if crisis_regime is None:
            crisis_regime = names.index("Crisis") if "Crisis" in names else M - 1
        if isinstance(crisis_regime, str):
            if crisis_regime not in names:
                raise ValueError(
                    f"`crisis_regime` must be one of {names} or an index, got {crisis_regime!r}."
                )
            crisis_regime = names.index(crisis_regime)
        self.crisis_index = v.integer(
            "crisis_regime",
            crisis_regime,
            f"a name in {names} or an index in [0, {M})",
            lambda i: 0 <= i < M,
        )

    # --- dj.AbstractDriftModel ---------------------------------------------------------------

    kind: ClassVar[str] = "imm"

    @property
    def state_dim(self) -> int:
        return max(d.state_dim for d in self.dynamics)

    @property
    def regime_dynamics(self) -> tuple[AbstractDynamics, ...]:
        return self.dynamics

    def transition_matrix(self, dt=None) -> TransitionMatrix:
        """``Pi`` for a step of ``dt`` seconds: the per-cycle ``transition`` (``dt`` is not
        used), or ``expm(rates * dt)`` for continuous-time regimes (``dt`` required; entries
        below 0 by rounding are set to 0)."""
        if self.rates is None:
            return self.transition
        if dt is None:
            raise ValueError(
                "this dj.IMMModel has continuous-time regimes (`rates`): its transition "
                "matrix depends on the step, so pass the step length, transition_matrix(dt) "
                "with dt in seconds (Pi = expm(rates * dt))."
            )
        dt = jnp.asarray(dt, self.rates.dtype)
        return jnp.maximum(jax.scipy.linalg.expm(self.rates * dt), 0.0)

    @property
    def transition_depends_on_dt(self) -> bool:
        return self.rates is not None

    def expected_durations(self, cycle_seconds=None) -> Float[Array, " M"]:
        """Each regime's expected duration in seconds: ``-1 / rates[j, j]`` for
        continuous-time regimes; for a per-cycle ``Pi``, ``cycle_seconds / (1 - Pi[j, j])``
        (a geometric number of cycles, ``cycle_seconds`` required). ``inf`` for a regime
        that is never left."""
        if self.rates is not None:
            rate = -jnp.diagonal(self.rates)
            cycle = jnp.ones((), self.dtype)
        else:
            if cycle_seconds is None:
                raise ValueError(
                    "`cycle_seconds` is required for a per-cycle `transition` (the seconds "
                    "one cycle lasts): the expected duration is cycle_seconds / (1 - Pi[j, j])."
                )
            cycle = v.positive("cycle_seconds", cycle_seconds, self.dtype)
            rate = 1.0 - jnp.diagonal(self.transition)
        leaving = rate > 0
        return jnp.where(leaving, cycle / jnp.where(leaving, rate, 1.0), jnp.inf)

    @property
    def initial_regime_probs(self) -> RegimeVector:
        return self.init_probs

    def initial_prior_fields(self) -> tuple[str, ...]:
        return ("init_probs", "init_mean", "init_cov")

    def default_adjoint(self) -> CheckpointAdjoint:
        return CheckpointAdjoint()

    def filter_from(self, state, zs, dt, adjoint) -> tuple[IMMResult, IMMState]:
        return _imm_scan(self, zs, dt, adjoint, True, state, loop_kind())

    def initial_state(self) -> IMMState:
        return initial_state(self)

    def cycle(self, state: IMMState, z, dt, observation=None):
        return imm_cycle(self, state, z, dt, observation)

    def state_moments(self, state: IMMState):
        M = self.num_regimes
        lp, ms, cs = _unstack(state, M)
        return combine([jnp.exp(x) for x in lp], ms, cs)

    def state_regime_probs(self, state: IMMState) -> RegimeVector:
        return jnp.exp(state.log_probs)


class IMMState(eqx.Module):
    """The IMM's state after a cycle: log mode probabilities and each model's posterior
    moments. Both cycles (the general one here, the scalar one of ``_filters/imm_scalar.py``) start
    from ``initial_state(model)`` and the streaming estimator holds this state whichever
    cycle it runs."""

    log_probs: Float[Array, " M"]
    means: Float[Array, "M n"]
    covs: Float[Array, "M n n"]


class IMMResult(AbstractFilterResult):
    """Per-step outputs of ``dj.filter`` on an ``IMMModel`` (leading axis ``T``).

    A result of ``jax.vmap(dj.filter)`` has a leading batch axis on every field; the
    properties keep it (``drift`` is then ``[B, T]``). ``drift``, ``drift_var``,
    ``p_crisis`` and ``sigma_effective`` are those of every filter result
    (``dj.AbstractFilterResult``): the mixture's, and the crisis regime's probability.
    """

    log_likelihood: Scalar
    log_likelihoods: Float[Array, " T"]
    regime_probs: Float[Array, "T M"]
    predicted_regime_probs: Float[Array, "T M"]
    means: Float[Array, "T n"]
    covs: Float[Array, "T n n"]
    model_means: Float[Array, "T M n"]
    model_covs: Float[Array, "T M n n"]
    crisis_index: int = eqx.field(static=True)
    chunked: ChunkedInfo | None = None

    @property
    def model_drifts(self) -> Float[Array, "*batch T M"]:
        return self.model_means[..., 0]

    @property
    def model_drift_vars(self) -> Float[Array, "*batch T M"]:
        return self.model_covs[..., 0, 0]


def _safe_log(x):
    """``log x`` with ``log 0 = -inf`` and a zero (not NaN) gradient at 0."""
    pos = x > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, x, 1.0)), -jnp.inf)


def mix(log_probs: list, means: list, covs: list, Pi: Array):
    """Step 1, mixing: ``cbar_j = sum_i Pi_ij w_i`` and the moment-matched mixed priors.

    Returns ``(log cbar, mixed means, mixed covs)``; all lists over the M regimes.
    """
    M = len(log_probs)
    top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, log_probs))
    w = [jnp.exp(lp - top) for lp in log_probs]  # proportional to w_i, max 1
    log_cbar, mixed_means, mixed_covs = [], [], []
    for j in range(M):
        c = sum(Pi[i, j] * w[i] for i in range(M))
        log_cbar.append(_safe_log(c) + top)
        # mu_{i|j} = Pi_ij w_i / c_j; an unreachable regime keeps its own state. Below
        # sqrt(smallest normal) c^2 underflows and (x/c)' = -x/c^2 would be NaN, so such a
        # c counts as unreachable (relative to the largest w, which is 1 here).
        reachable = c > jnp.sqrt(jnp.finfo(c.dtype).tiny)
        safe_c = jnp.where(reachable, c, 1.0)
        mu = [jnp.where(reachable, Pi[i, j] * w[i] / safe_c, float(i == j)) for i in range(M)]
        mean_j, cov_j = combine(mu, means, covs)  # the mixture of the regimes, weights mu
        mixed_means.append(mean_j)
        mixed_covs.append(cov_j)
    return log_cbar, mixed_means, mixed_covs


def _outer(a, b):
    """``a b^T``; for scalars (the scalar cycle's moments) the product."""
    if jnp.ndim(a) == 0:
        return a * b
    return a[..., :, None] * b[..., None, :]


def combine(probs: list, means: list, covs: list):
    """Step 5, the mixture output: ``mean = sum_j w_j mu_j`` and ``cov = sum_j w_j (P_j +
    d_j d_j^T)``, ``d_j = mu_j - mean``, from the regime probabilities ``w_j``.

    Lists over the M regimes, of ``[n]`` / ``[n, n]`` moments (the general cycle) or scalars
    (the scalar cycle): one mixture for both.
    """
    mean = functools.reduce(jnp.add, [w * m for w, m in zip(probs, means, strict=True)])
    cov = functools.reduce(
        jnp.add,
        [w * (P + _outer(m - mean, m - mean)) for w, m, P in zip(probs, means, covs, strict=True)],
    )
    return mean, cov


def imm_step(state: tuple, Fs: list, Qs: list, z, H, R, Pi, update: str, robust=None):
    """One IMM cycle on unrolled state ``(log_probs, means, covs)`` (lists over regimes);
    ``robust``: the observation's robust update (each regime gated on its own innovation,
    ``_models/robust.py``), ``None``: Gaussian.

    Returns the new unrolled state and ``(log p(z | past), log cbar)``.
    """
    log_probs, means, covs = state
    M = len(log_probs)
    log_cbar, mixed_means, mixed_covs = mix(log_probs, means, covs, Pi)
    new_means, new_covs, logls = [], [], []
    for j in range(M):
        pm, pP = predict(mixed_means[j], mixed_covs[j], Fs[j], Qs[j])
        mj, Pj, llj = measurement_update(pm, pP, z, H, R, update, robust)
        new_means.append(mj)
        new_covs.append(Pj)
        logls.append(llj)
    joint = [lc + ll for lc, ll in zip(log_cbar, logls, strict=True)]
    # Normalise relative to the largest term: with an outlier the joint terms are ~-1e14
    # and subtracting the full log-sum (top + log s) would leave errors of one ulp of
    # that (~0.01) in the normalised log-probabilities, so they would not sum to 1.
    top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, joint))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    shifted = [a - top for a in joint]
    log_norm = jnp.log(sum(jnp.exp(a) for a in shifted))
    new_log_probs = [a - log_norm for a in shifted]
    step_ll = top + log_norm
    # With nothing observed the step is a pure prediction: it adds exactly 0.
    anything = jnp.any(~jnp.isnan(z))
    step_ll = jnp.where(anything, step_ll, 0.0)
    return (new_log_probs, new_means, new_covs), (step_ll, log_cbar)


def _unstack(state: IMMState, M: int) -> tuple:
    """The general cycle's view of an ``IMMState``: lists over the regimes."""
    return (
        [state.log_probs[j] for j in range(M)],
        [state.means[j] for j in range(M)],
        [state.covs[j] for j in range(M)],
    )


def _stack(state: tuple) -> IMMState:
    lp, ms, cs = state
    return IMMState(jnp.stack(lp), jnp.stack(ms), jnp.stack(cs))


def initial_state(model: IMMModel) -> IMMState:
    M = model.num_regimes
    return IMMState(
        _safe_log(model.init_probs),
        jnp.broadcast_to(model.init_mean, (M, model.state_dim)),
        jnp.broadcast_to(model.init_cov, (M, model.state_dim, model.state_dim)),
    )


class StepObservations(NamedTuple):
    """What each step's update sees, for the whole series (leading axis ``T``).

    With several features and a scalar drift loading, the features are first reduced
    exactly to one scalar observation per step (``_filters/reduction.py``): ``zs`` is then
    ``[T, 1]`` with noise ``Rs`` ``[T, 1, 1]`` seen through ``H = [1, 0, ...]``, and
    ``log_g`` ``[T]`` is the log-likelihood the reduction leaves out (to be added back).
    """

    zs: Float[Array, "T k"]
    H: Float[Array, "k n"]
    R: Float[Array, "k k"] | None  # the noise covariance, when it is the same every step
    Rs: Float[Array, "T k k"] | None  # else per step
    update: str
    log_g: Float[Array, " T"] | None


def step_observations(H, R, update: str, zs, reduce: bool) -> StepObservations:
    """The observations both IMM cycles update with (the filter: all steps; the streaming
    estimator: one), from features ``zs`` ``[T, m]`` seen through ``H`` ``[m, n]`` (the
    loadings in column 0), ``R`` ``[m, m]`` and an update mode; ``reduce``: reduce several
    features to one (exact, ``_filters/reduction.py``)."""
    if reduce and zs.shape[-1] > 1:
        ys, rs, log_g = reduce_features(H[:, 0], R, update, zs)
        H1 = jnp.zeros((1, H.shape[1]), H.dtype).at[0, 0].set(1.0)
        return StepObservations(ys[:, None], H1, None, rs[:, None, None], "joint", log_g)
    return StepObservations(zs, H, R, None, update, None)


def imm_filter(
    model: IMMModel,
    zs: ObsLike,
    dt: DtLike,
    *,
    adjoint=None,
    scalar_path: bool = True,
) -> IMMResult:
    """Sequential IMM filter over ``zs``; see ``dj.filter`` (``dj.Sequential(adjoint)``).

    ``adjoint``: ``None`` is the model's default (``dj.CheckpointAdjoint()``).
    ``scalar_path=False`` forces the general cycle on the m features (tests compare the
    two); by default a scalar-state IMM runs the scalar cycle, and several features are
    reduced exactly to one observation per step (``_filters/reduction.py``) for any state size.
    """
    dtype = model.dtype
    zs = prepare_observations(zs, model.num_features, dtype, model.observation.feature_names)
    dt = prepare_dt(dt, zs.shape[0], dtype)
    adjoint = model.default_adjoint() if adjoint is None else adjoint
    return _imm_scan(model, zs, dt, adjoint, scalar_path, None, loop_kind())[0]


# Compiled once per model structure, adjoint and shapes (as the Kalman filter's scan).
@eqx.filter_jit
def _imm_scan(model: IMMModel, zs, dt, adjoint, scalar_path: bool, init=None, loop="unrolled"):
    """The sequential IMM filter on checked inputs from ``init`` (an ``IMMState``;
    ``None``: the prior): ``(IMMResult, IMMState after the last step)``. ``loop``: the
    scalar cycle's loop (``_filters/loop_choice.py``), a static argument so that each is
    its own compilation (a ``jit`` under ``vmap`` traces at one example's shapes)."""
    M, n = model.num_regimes, model.state_dim
    if n == 1 and scalar_path:
        # The same cycle written for scalars: ~2x faster batched, ~3x in reverse mode.
        from .imm_scalar import scalar_imm_filter

        with scalar_loop(loop):
            return scalar_imm_filter(model, zs, dt, adjoint, init)
    H, R = model.observation.matrices(n, model.dtype)
    obs = step_observations(H, R, model.observation.update, zs, reduce=scalar_path)
    update = obs.update
    # Every array a step reads that is not per step is an explicit parameter (a
    # hand-written adjoint differentiates only its explicit inputs); the rest is per step.
    params, xs = {"H": obs.H}, {"z": obs.zs}
    if obs.R is None:
        xs["R"] = obs.Rs
    else:
        params["R"] = obs.R
    if model.observation.robust is not None:  # an explicit parameter, as every other
        params["robust"] = model.observation.robust
    regime_transitions(model, dt, params, xs)
    Fs, Qs = model.transitions(dt) if dt.ndim == 0 else model.stacked_transitions(dt)
    (params if dt.ndim == 0 else xs).update(F=Fs, Q=Qs)

    def step(p, carry, x):
        e = {**p, **x}
        F, Q, z, H_, R_ = e["F"], e["Q"], e["z"], e["H"], e["R"]
        carry, (ll, log_cbar) = imm_step(carry, F, Q, z, H_, R_, e["Pi"], update, e.get("robust"))
        log_probs, means, covs = carry
        mean, cov = combine([jnp.exp(lp) for lp in log_probs], means, covs)
        probs = jnp.exp(jnp.stack(log_probs))
        outs = (
            ll,
            probs,
            jnp.exp(jnp.stack(log_cbar)),
            mean,
            cov,
            jnp.stack(means),
            jnp.stack(covs),
        )
        return carry, outs

    init = _unstack(initial_state(model) if init is None else init, M)
    last, outs = adjoint.scan(step, params, init, xs)
    lls, probs, pred_probs, means, covs, mmeans, mcovs = outs
    if obs.log_g is not None:
        lls = lls + obs.log_g
    result = IMMResult(
        jnp.sum(lls), lls, probs, pred_probs, means, covs, mmeans, mcovs, model.crisis_index
    )
    return result, _stack(last)


def regime_transitions(model, dt, params: dict, xs: dict) -> None:
    """Put the regime chain's ``Pi`` where the scan reads it: one matrix for every step
    (``params["Pi"]``) or, for continuous-time regimes with a ``dt`` per step, one per step
    (``xs["Pi"]`` ``[T, M, M]``); ``model.transition_matrices`` decides."""
    Pi = model.transition_matrices(dt)
    (xs if Pi.ndim == 3 else params)["Pi"] = Pi


def imm_cycle(model: IMMModel, state: IMMState, z, dt, observation=None):
    """One step of ``dj.filter``'s own cycle (the streaming estimator's update).

    The scalar cycle for a scalar state, the general one otherwise, with several features
    reduced to one exactly as the filter does. Returns ``(new state, log p(z | past))``.
    """
    n, M, Pi = model.state_dim, model.num_regimes, model.transition_matrix(dt)
    if observation is None:
        H, R = model.observation.matrices(n, model.dtype)
        update = model.observation.update
    else:
        H, R, update = observation
    obs = step_observations(H, R, update, z[None], reduce=True)
    z1, R1 = obs.zs[0], obs.R if obs.R is not None else obs.Rs[0]
    Fs, Qs = model.transitions(dt)
    if n == 1:
        from .imm_scalar import from_scalar, scalar_cycle, to_scalar

        probs, means, variances = to_scalar(state)
        a, q = [F[0, 0] for F in Fs], [Q[0, 0] for Q in Qs]
        (_, means, variances), (ll, _), log_probs = scalar_cycle(
            probs,
            means,
            variances,
            a,
            q,
            z1[0],
            obs.H[0, 0],
            R1[0, 0],
            Pi,
            log_weights=True,
            robust=model.observation.robust,
        )
        state = from_scalar(log_probs, means, variances)
    else:
        carry, (ll, _) = imm_step(
            _unstack(state, M), Fs, Qs, z1, obs.H, R1, Pi, obs.update, model.observation.robust
        )
        state = _stack(carry)
    return state, ll if obs.log_g is None else ll + obs.log_g[0]
