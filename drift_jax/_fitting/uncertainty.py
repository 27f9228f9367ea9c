"""``dj.standard_errors``: asymptotic standard errors of fitted parameters (delta method).

The observed information is the Hessian ``H`` of the *total* negative log-likelihood
(``dj.fit_loss`` times ``T``; with a ``prior``, of the negative log posterior: a Laplace
approximation) at the estimate, taken in the free coordinates ``x`` that ``dj.fit``
optimises (``dj.unconstrain``). Its inverse is the asymptotic covariance of ``x``; the
reported parameters ``g(x)`` (``theta``, ``sigma``, the entries of ``R = L L^T``, of
``Pi`` ...) get ``J H^{-1} J^T`` with ``J = dg/dx`` (the delta method).

Non-identification: ``H = V diag(w) V^T``. A direction with ``w <= rcond * max|w|`` is flat
(or, with ``w < 0``, curving down: not a minimum); a free coordinate with more than 10% of
its squared norm (``sum_k V[i, k]^2`` over such ``k``) in those directions is not
identified, and so is every reported parameter that depends on it: its standard error and
interval are NaN, never a huge or imaginary number. The others use the pseudo-inverse of
``H`` on the remaining eigen-directions.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from statistics import NormalDist

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._core import validate as v
from .._core.inputs import prepare_dt, prepare_observations
from .._core.optional import optional_pandas
from .._filters.methods import SEQUENTIAL, Chunked, Sequential, method_name, resolve_method
from .losses import (
    _check_model,
    _check_risk,
    check_prior,
    check_weights,
    objective,
    prepare_returns,
)
from .params import FitParams, Unconstrained, constrain

pd = optional_pandas()

#: Share of a free coordinate's squared norm in flat directions above which it is flagged.
FLAT_SHARE = 0.1


@dataclass(frozen=True)
class StandardErrors:
    """What ``dj.standard_errors`` returns.

    Attributes:
        table: a ``pandas.DataFrame`` indexed by parameter name (``dynamics[2].sigma``,
            ``transition[0,1]``, ``observation.cov[1,0]``, ``risk.crisis_amplifier``) with
            columns ``estimate``, ``std_err``, ``z`` (estimate / std_err), ``p_value``
            (two-sided, of ``z``), ``ci_low``, ``ci_high``, ``identified`` and ``scale``
            (``"log"``, ``"logit"`` or ``"linear"``: how the interval was formed).
        covariance: delta-method covariance of the reported parameters (a DataFrame
            indexed by name on both axes; NaN rows and columns where not identified).
        raw_covariance: covariance of the free coordinates (pseudo-inverse of the
            Hessian; NaN where not identified), indexed by ``raw_names``.
        hessian: the Hessian of the total objective in free coordinates, ``[p, p]``.
        hessian_eigenvalues: its eigenvalues, ascending.
        condition_number: ``max|w| / min|w|`` over the eigenvalues (``inf`` if singular).
        gradient: the gradient of the total objective in free coordinates (about 0 at an
            optimum).
        newton_step: ``-H^+ gradient`` in units of each free coordinate's standard error:
            how far the point is from the optimum (``|.| << 1`` after a converged fit).
        objective: the total objective (NLL, minus the log prior if any) at the estimate.
        num_obs: ``T``, the number of time steps.
        level: the confidence level of the intervals.
        raw_names: names of the free coordinates (``log(dynamics.sigma)``, ...).
        model_name: the model's class name.
    """

    table: pd.DataFrame
    covariance: pd.DataFrame
    raw_covariance: pd.DataFrame
    hessian: np.ndarray
    hessian_eigenvalues: np.ndarray
    condition_number: float
    gradient: np.ndarray
    newton_step: np.ndarray
    objective: float
    num_obs: int
    level: float
    raw_names: tuple[str, ...]
    model_name: str

    @property
    def identified(self) -> bool:
        """Whether every reported parameter is identified."""
        return bool(self.table["identified"].all())

    def summary(self) -> str:
        """A text table in the style of statsmodels' ``summary()``, with warnings."""
        return _summary(self)

    def __str__(self) -> str:
        return self.summary()


# --- names of the reported parameters and of the free coordinates ------------------------


def _leaf_name(path) -> str:
    """A readable name of a leaf path: ``dynamics[2].sigma``, ``risk.sigma_base``."""
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append("." + entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(f"[{entry.idx}]")
        else:
            parts.append(jax.tree_util.keystr((entry,)))
    name = "".join(parts).lstrip(".")
    if name.startswith("model."):
        name = name[len("model.") :]
    return name


def _describe(name: str, u: Unconstrained):
    """Reported names and interval scales, and free-coordinate names, of one leaf: as its
    field's declared constraint reports it (``R``'s entries for ``cov_chol``, ...)."""
    return u.constraint.describe(name, u.shape, u.ref)


def _reported_values(u: Unconstrained) -> jax.Array:
    """The reported entries of one leaf: the field, or ``R``'s lower triangle for ``L``."""
    return u.constraint.reported(u.value())


def _is_unconstrained(x) -> bool:
    return isinstance(x, Unconstrained)


# --- derivatives --------------------------------------------------------------------------


@eqx.filter_jit
def _derivatives(raw, params, zs, dt, returns, weights, prior, method):
    """Total objective, gradient, Hessian in free coordinates, reported values, ``dg/dx``."""
    x0, unravel = ravel_pytree(raw)
    # A probability that starts at exactly 0 has logit -inf (a structural zero): it is held
    # there, its rows of the derivatives are 0 and dropped by the caller. A mask, not an
    # index list, so the compiled function does not depend on where the zeros are.
    fixed = ~jnp.isfinite(x0)
    T = zs.shape[0]

    def full(y):
        return jnp.where(fixed, x0, y)

    def total(y):
        p = constrain(unravel(full(y)), params)
        return objective(p.model, p.risk, zs, dt, returns, weights, prior, method) * T

    def reported(y):
        leaves = jax.tree.leaves(unravel(full(y)), is_leaf=_is_unconstrained)
        return jnp.concatenate([_reported_values(u) for u in leaves])

    def gradient(y):
        value, grad = jax.value_and_grad(total)(y)
        return grad, (value, grad)

    y0 = jnp.where(fixed, 0.0, x0)
    # Reverse over reverse, which every method supports (dj.FusedAdjoint, the Kalman
    # filter's default, has no forward mode); the value and gradient come out of the same
    # trace as auxiliary outputs.
    hess, (value, grad) = jax.jacrev(gradient, has_aux=True)(y0)
    jac = jax.jacfwd(reported)(y0)
    return value, grad, hess, reported(y0), jac


# --- the public function ------------------------------------------------------------------


def _split_fitted(fitted, risk):
    from .fit import FitResult

    if isinstance(fitted, FitResult):
        if np.ndim(fitted.converged) != 0:
            raise ValueError(
                f"`fitted` is a batched dj.FitResult (from dj.fit_batch, "
                f"{np.shape(fitted.converged)[0]} instruments); pass one instrument, "
                f"`jax.tree.map(lambda x: x[i], result)`, with its own data."
            )
        model, own_risk = fitted.model, fitted.risk
    elif isinstance(fitted, FitParams):
        model, own_risk = fitted.model, fitted.risk
    else:
        model, own_risk = fitted, None
    _check_model(model)
    if own_risk is not None and risk is not None:
        raise ValueError(
            "`risk` was given but `fitted` already holds a dj.RiskModel; pass one of them "
            "(the fitted risk is used when `fitted` is a dj.FitResult or dj.FitParams)."
        )
    risk = own_risk if risk is None else risk
    if risk is not None:
        _check_risk(risk, model)
    return FitParams(model, risk)


def _check_level(level) -> float:
    return v.real(
        "level",
        level,
        "a confidence level strictly between 0 and 1 (e.g. 0.95)",
        lambda x: 0.0 < x < 1.0,
    )


def _check_rcond(rcond) -> float:
    return v.real(
        "rcond",
        rcond,
        "a number in [0, 1) (the relative eigenvalue below which a Hessian direction "
        "counts as flat)",
        lambda x: 0.0 <= x < 1.0,
    )


def standard_errors(
    fitted,
    zs,
    dt,
    *,
    returns=None,
    risk=None,
    trainable=None,
    feature_weight=1.0,
    return_weight=1.0,
    prior=None,
    level=0.95,
    rcond=1e-8,
    method=SEQUENTIAL,
) -> StandardErrors:
    """Standard errors and confidence intervals of fitted parameters (observed information).

    Takes the Hessian ``H`` of the total objective ``feature_weight * NLL_features +
    return_weight * NLL_returns - log prior`` (``dj.fit_loss`` times ``T``) in the free
    coordinates ``x`` of the trainable fields (``dj.unconstrain``), reverse over reverse,
    and maps ``H^{-1}`` to the reported parameters by the delta method, ``J H^{-1} J^T``.
    ``R`` is reported by its entries (``observation.cov[i,j]``, ``i >= j``), not by its
    Cholesky factor (``cov_chol`` is declared ``dj.LowerCholesky(reported_as="cov")``);
    ``Pi`` by all of its entries (each row's share one free coordinate fewer than
    entries, so their covariance is singular; a structural zero stays 0 with standard
    error 0); continuous-time ``rates`` (``dj.Generator``) by their off-diagonal entries
    ``rates[i,j]`` (1/s) and the expected durations ``expected_duration[j] = -1 /
    rates[j,j]`` (seconds), both on the log scale.

    Intervals at ``level``, with ``z`` the normal quantile, on the scale that each field's
    declared constraint gives (``_models/constraints.py``; never chosen by the field's name):

    - positive parameters (fields declared ``dj.Positive`` / ``dj.NonNegative``:
      ``theta``, ``sigma``, ``sigma_base``, ``crisis_amplifier``; the variances on the
      diagonal of a ``dj.LowerCholesky`` / ``dj.PositiveDefinite`` field;
      ``scale="log"``): ``estimate * exp(+-z se / estimate)``, i.e. the symmetric
      interval of ``log(estimate)`` mapped back; for a field trained in log coordinates
      that is exactly ``exp(x +- z se_x)``. It stays positive and is not symmetric
      around the estimate.
    - probabilities (``dj.SimplexRows`` / ``dj.Simplex``: the entries of ``Pi`` and
      ``init_probs``; ``scale="logit"``): the symmetric interval of ``logit(p)`` mapped
      back, inside ``(0, 1)``.
    - the rest (``dj.Real``: loadings, ``init_mean``; covariances off the diagonal;
      ``scale="linear"``): ``estimate +- z se``.

    A parameter that the data do not identify (a near-flat or downward direction of ``H``:
    eigenvalue ``<= rcond * max|eigenvalue|``) gets ``identified=False`` and NaN standard
    error and interval; ``summary()`` lists them. The errors are only meaningful at an
    optimum: ``newton_step`` says how far the point is from one.

    Arguments:
        fitted: a ``dj.FitResult`` (one instrument), a ``dj.FitParams`` or a model
            (``dj.KalmanModel`` / ``dj.IMMModel``) at the estimate.
        zs, dt: the data it was fitted to, as for ``dj.fit``.
        returns: realised returns ``[T]``, if the fit used them.
        risk: a ``dj.RiskModel`` when ``fitted`` is a model (a ``FitResult`` brings its
            own).
        trainable: the fields that were estimated, with ``dj.fit``'s selector semantics and
            default (pass the same as to ``dj.fit``). The other fields are held fixed and
            get no standard error.
        feature_weight, return_weight, prior: as for ``dj.fit`` (the same objective).
        level: confidence level of the intervals, in ``(0, 1)``.
        rcond: relative eigenvalue threshold of a flat direction, in ``[0, 1)``.
        method: how the filter runs and is differentiated, as for ``dj.filter`` (default
            ``dj.Sequential()``, the model's default adjoint). The Hessian is taken reverse
            over reverse, so the method must support second derivatives that way
            (``method.second_order``; the fused adjoint does). ``dj.Chunked(...)`` (whose
            adjoint loops until convergence and is not differentiable again) is run as
            ``dj.Sequential`` with its adjoint: the same likelihood. A method without
            second derivatives is otherwise a ``ValueError`` naming it.

    Returns:
        A ``StandardErrors`` with the ``table`` (estimate, std_err, z, p_value, ci_low,
        ci_high, identified, scale), the ``covariance`` of the reported parameters, the
        ``raw_covariance``, ``hessian``, ``hessian_eigenvalues``, ``condition_number`` and
        ``summary()``.

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> zs = np.random.default_rng(0).normal(0.0, 2.0, 500)
        >>> model = dj.KalmanModel(dj.OU(0.5, 1.0), dj.Observation.scalar(4.0, loading=0.0))
        >>> se = dj.standard_errors(model, zs, 1.0)  # a loading of 0: theta, sigma unseen
        >>> se.table["identified"].to_dict()
        {'dynamics.theta': False, 'dynamics.sigma': False, 'observation.cov[0,0]': True}
        >>> "Not identified" in se.summary()
        True
    """
    params = _split_fitted(fitted, risk)
    model = params.model
    method = resolve_method(method, model)
    if isinstance(method, Chunked):
        # The same likelihood; its second derivatives (reverse over reverse) from the
        # sequential scan, which has them (the chunked adjoint loops until convergence).
        method = Sequential(method.adjoint)
    if not method.second_order:
        raise ValueError(
            f"dj.standard_errors takes the Hessian reverse over reverse, which "
            f"method={method_name(method)} does not support; pass a method that does, e.g. "
            "dj.Sequential() (the model's default adjoint)."
        )
    dtype = model.dtype
    zs = prepare_observations(zs, model.num_features, dtype, model.observation.feature_names)
    T = int(zs.shape[0])
    dt = prepare_dt(dt, T, dtype)
    if returns is not None:
        if params.risk is None:
            raise ValueError(
                "`returns` are scored under sigma_effective = sigma_base (1 + "
                "crisis_amplifier P(Crisis)), so they need `risk=dj.RiskModel(...)` (or a "
                "dj.FitResult that holds one); got risk=None."
            )
        returns = prepare_returns(returns, T, dtype)
    weights = check_weights(feature_weight, return_weight, dtype)
    check_prior(prior)
    level = _check_level(level)
    rcond = _check_rcond(rcond)

    from .fit import trainable_coordinates

    mask, raw = trainable_coordinates(params, trainable, returns is not None)

    names, scales, raw_names = [], [], []
    for path, u in jax.tree_util.tree_flatten_with_path(raw, is_leaf=_is_unconstrained)[0]:
        rep, sc, rn = _describe(_leaf_name(path), u)
        names += rep
        scales += sc
        raw_names += rn
    # A structural zero of a probability vector (logit -inf) is held fixed: no coordinate.
    free = np.isfinite(np.asarray(ravel_pytree(raw)[0]))
    raw_names = [n for n, f in zip(raw_names, free, strict=True) if f]

    value, grad, hess, estimate, jac = (
        np.asarray(a, dtype=np.float64)
        for a in _derivatives(raw, params, zs, dt, returns, weights, prior, method)
    )
    grad, hess, jac = grad[free], hess[np.ix_(free, free)], jac[:, free]
    return _assemble(
        value, grad, hess, estimate, jac, names, scales, raw_names, T, level, rcond, model
    )


def _assemble(value, grad, hess, estimate, jac, names, scales, raw_names, T, level, rcond, model):
    p = hess.shape[0]
    hess = 0.5 * (hess + hess.T)
    if not np.all(np.isfinite(hess)):
        # Nothing can be said: report every parameter as not identified.
        w = np.full(p, np.nan)
        bad_raw = np.ones(p, bool)
        V = np.eye(p)
        keep = np.zeros(p, bool)
    else:
        w, V = np.linalg.eigh(hess)
        top = np.max(np.abs(w)) if p else 0.0
        flat = w <= rcond * top
        share = np.sum(V[:, flat] ** 2, axis=1)
        bad_raw = share > FLAT_SHARE
        keep = ~flat
    inv_w = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
    raw_cov = (V * inv_w) @ V.T
    raw_cov[bad_raw, :] = np.nan
    raw_cov[:, bad_raw] = np.nan

    good_raw = ~bad_raw
    cov = jac[:, good_raw] @ raw_cov[np.ix_(good_raw, good_raw)] @ jac[:, good_raw].T
    bad = np.any(jac[:, bad_raw] != 0.0, axis=1)
    cov[bad, :] = np.nan
    cov[:, bad] = np.nan
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    se[bad] = np.nan

    z = NormalDist().inv_cdf(0.5 + 0.5 * level)
    lo, hi = _intervals(estimate, se, np.asarray(scales), z)
    with np.errstate(divide="ignore", invalid="ignore"):
        zstat = np.where(se > 0, estimate / np.where(se > 0, se, 1.0), np.nan)
    p_value = np.array([math.erfc(abs(s) / math.sqrt(2.0)) for s in zstat])
    table = pd.DataFrame(
        {
            "estimate": estimate,
            "std_err": se,
            "z": zstat,
            "p_value": p_value,
            "ci_low": lo,
            "ci_high": hi,
            "identified": ~bad,
            "scale": scales,
        },
        index=pd.Index(names, name="parameter"),
    )
    abs_w = np.abs(w)
    if np.all(np.isfinite(w)) and p:
        cond = float(np.max(abs_w) / np.min(abs_w)) if np.min(abs_w) > 0 else math.inf
    else:
        cond = math.nan
    raw_se = np.sqrt(np.clip(np.diag(raw_cov), 0.0, None))
    step = -(raw_cov[np.ix_(good_raw, good_raw)] @ grad[good_raw])
    newton = np.full(p, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        newton[good_raw] = step / raw_se[good_raw]
    return StandardErrors(
        table=table,
        covariance=pd.DataFrame(cov, index=names, columns=names),
        raw_covariance=pd.DataFrame(raw_cov, index=raw_names, columns=raw_names),
        hessian=hess,
        hessian_eigenvalues=w,
        condition_number=cond,
        gradient=grad,
        newton_step=newton,
        objective=float(value),
        num_obs=T,
        level=level,
        raw_names=tuple(raw_names),
        model_name=type(model).__name__,
    )


def _intervals(est, se, scales, z):
    lo, hi = est - z * se, est + z * se
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pos = (scales == "log") & (est > 0)
        f = np.exp(z * se / np.where(pos, est, 1.0))
        lo = np.where(pos, est / f, lo)
        hi = np.where(pos, est * f, hi)
        prob = (scales == "logit") & (est > 0) & (est < 1)
        q = np.where(prob, est, 0.5)
        logit, half = np.log(q / (1.0 - q)), z * se / (q * (1.0 - q))
        lo = np.where(prob, 1.0 / (1.0 + np.exp(-(logit - half))), lo)
        hi = np.where(prob, 1.0 / (1.0 + np.exp(-(logit + half))), hi)
    # A structural zero (or one) of a probability vector: fixed, a point "interval".
    edge = (scales == "logit") & ~prob
    lo = np.where(edge & np.isfinite(se), est, lo)
    hi = np.where(edge & np.isfinite(se), est, hi)
    return lo, hi


# --- the text table -----------------------------------------------------------------------


def _num(x: float) -> str:
    if not np.isfinite(x):
        return "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")
    if x == 0.0 or 1e-4 <= abs(x) < 1e5:
        return f"{x:.4f}"
    return f"{x:.3e}"


def _summary(se: StandardErrors) -> str:
    t = se.table
    width_name = max(24, *(len(n) for n in t.index))
    cols = 11
    lo_q, hi_q = 0.5 - 0.5 * se.level, 0.5 + 0.5 * se.level
    head = f"{'':<{width_name}}" + "".join(
        f"{h:>{cols}}" for h in ("coef", "std err", "z", "P>|z|", f"[{lo_q:.3g}", f"{hi_q:.3g}]")
    )
    width = len(head)
    rule, thin = "=" * width, "-" * width

    def pair(k1, v1, k2, v2):
        half = width // 2
        left = f"{k1:<22}{v1:>{half - 23}} "
        return left + f"{k2:<22}{v2:>{width - half - 22}}"

    lines = [
        "drift_jax standard errors (observed information, delta method)".center(width),
        rule,
        pair("Model:", se.model_name, "No. observations:", str(se.num_obs)),
        pair("Objective (total):", f"{se.objective:.6g}", "Parameters:", str(len(t))),
        pair(
            "Free coordinates:",
            str(len(se.raw_names)),
            "Condition number:",
            f"{se.condition_number:.3g}",
        ),
        rule,
        head,
        thin,
    ]
    for name, row in t.iterrows():
        cells = [row.estimate, row.std_err, row.z, row.p_value, row.ci_low, row.ci_high]
        shown = [_num(c) for c in cells]
        shown[3] = "nan" if np.isnan(row.p_value) else f"{row.p_value:.3f}"  # as statsmodels
        lines.append(f"{name:<{width_name}}" + "".join(f"{c:>{cols}}" for c in shown))
    lines.append(rule)
    notes = [
        "Standard errors from the inverse Hessian of the total objective in free "
        "coordinates, mapped by the delta method.",
        "Intervals: log scale for positive parameters (estimate * exp(+-z se/estimate)), "
        "logit scale for probabilities, estimate +- z se otherwise (column `scale`).",
    ]
    bad = [str(n) for n in t.index[~t["identified"].to_numpy()]]
    warnings = []
    if bad:
        negative = bool(np.any(se.hessian_eigenvalues < 0))
        warnings.append(
            "Not identified (near-singular Hessian"
            + (", or a negative eigenvalue: not a minimum" if negative else "")
            + "): "
            + ", ".join(bad)
            + ". Their std err and interval are NaN; fix them, add data or a prior."
        )
    far = np.nanmax(np.abs(se.newton_step)) if np.any(np.isfinite(se.newton_step)) else 0.0
    if far > 0.1:
        warnings.append(
            f"Not at an optimum: a Newton step moves a free coordinate by {far:.3g} "
            f"standard errors; fit longer before reading the errors."
        )

    def numbered(k, text):
        return textwrap.fill(text, width, initial_indent=f"[{k}] ", subsequent_indent="    ")

    lines.append("Notes:")
    lines += [numbered(i + 1, n) for i, n in enumerate(notes)]
    if warnings:
        lines.append("Warnings:")
        lines += [numbered(i + 1 + len(notes), w) for i, w in enumerate(warnings)]
    return "\n".join(lines)
