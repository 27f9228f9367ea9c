"""The plain-Python reference (tests/reference_imm.py) equals drift_jax to 1e-13.

Every case runs the reference on the parsed TOML config of a model
(``tomllib.loads(dj.config_to_toml(model, risk))``) and compares each output, per step, with
``dj.filter`` and with the streaming estimator (``dj.IMMDriftEstimator`` /
``dj.KalmanDriftEstimator``, ``update_observation`` step by step), to 1e-13 relative to
``max(1, |value|)``. The data: a quiet drift that falls to -50 bps/s within 2 s (a
liquidation cascade, so the regime probabilities move through ~0 to ~1), irregular steps
(exponential gaps), missing components and steps with nothing observed.

Measured max differences (jax 0.10.2, CPU, float64; ``python -m tests.test_reference_imm``
prints them), the largest over the outputs (drift, drift variance, regime probabilities,
P(Crisis), sigma_effective, per-step and running log-likelihood), reference vs dj.filter
(300 steps) / vs the streaming estimator (200 steps):

    seed-m1              1.1e-14 / 5.2e-15    embedded-m4                     6.3e-15 / 5.0e-15
    seed-m1-regular-dt   8.9e-15 / 6.0e-15    kalman-m4                       8.7e-16 / 1.2e-15
    seed-m4              6.9e-15 / 7.4e-15    kalman-accel-exact-independent  1.9e-15 / 1.7e-15
    seed-m4-independent  7.2e-15 / 4.5e-15    zero-in-pi-m1                   7.8e-15 / 9.0e-15
    seed-m4-exact        9.5e-15 / 5.0e-15    zero-in-pi-m4                   1.2e-14 / 6.3e-15
    extended-m1          9.0e-15 / 7.1e-15    unreachable-m4                  5.4e-15 / 6.2e-15
    extended-m4          6.1e-15 / 6.4e-15    tiny-cbar-m1                    9.1e-15 / 5.5e-15
    extended-exact-m4    1.2e-14 / 5.2e-15

The drift variance is almost always the output with the largest difference: the
differences start at an ulp and grow where the regimes' means (~-50 bps/s in the cascade)
disagree, since their spread enters the mixture variance. dj.filter reduces the 4 features
exactly to one observation per step (_filters/reduction.py) and, for a scalar state, runs the
scalar cycle (_filters/imm_scalar.py); that is not the reference's m x m update, yet the gap stays
~1e-14.

A regime whose cbar is below sqrt(smallest normal) is too unlikely to mix from (both
cycles let it keep its own state), but it keeps its likelihood: a sharp jump (``_revival``:
Crisis at 1e-170, fed only by itself) lifts it to ~1 in dj.filter's scalar cycle as in the
general cycle and the reference (test_revived_regime_reference_equals_filter). Until
2026-12 the scalar cycle dropped that likelihood and held P(Crisis) at exactly 0 there
(log-likelihood -7109 vs -1405).
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

import drift_jax as dj
from drift_jax._models.presets import SEED_TRANSITION
from drift_jax._simulation.synthetic import cascade_profile, default_feature_cov, default_loadings

from .reference_imm import run, transition

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOL = 1e-13
RISK = dj.RiskModel(sigma_base=10.0, crisis_amplifier=2.0, threshold=0.3)
A4, R4 = default_loadings(), default_feature_cov()  # 4 correlated features (rho 0.6-0.7)
SEED_PI = SEED_TRANSITION.tolist()


def _data(seed, m, *, T=300, regular=False, missing=0.15, empty=0.05):
    """``(zs [T, m], dt [T] or a scalar)``: a cascade to -50 bps/s starting 20 s in."""
    rng = np.random.default_rng(seed)
    dt = np.full(T, 0.1) if regular else rng.exponential(0.2, T) + 1e-3
    t = np.cumsum(dt)
    start = 10.0 if regular else 20.0
    mu = cascade_profile(t, start, -50.0, fall_time=2.0, hold_time=12.0, recovery_time=10.0)
    alpha, R = (A4, R4) if m == 4 else (np.ones(m), np.eye(m) * 16.0)
    zs = mu[:, None] * alpha + rng.standard_normal((T, m)) @ np.linalg.cholesky(R).T
    zs[rng.random((T, m)) < missing] = np.nan  # missing components
    zs[rng.random(T) < empty] = np.nan  # steps with nothing observed
    zs[5] = np.nan
    return zs, (0.1 if regular else dt)


def _obs(m, update="joint"):
    if m == 1:
        return dj.Observation([1.0], [[16.0]], update)
    return dj.Observation(A4, R4, update)


def _imm(dynamics, m, Pi=SEED_PI, p0=None, **kw):
    names = ("Quiet", "Trending", "Crisis")
    return dj.IMMModel(dynamics, _obs(m), Pi, p0, regime_names=names, **kw)


def _seed():
    return dj.seed_imm().dynamics


CASES = {
    # name: (model, feature count, regular dt)
    "seed-m1": (lambda: dj.seed_imm(_obs(1)), 1, False),
    "seed-m1-regular-dt": (lambda: dj.seed_imm(_obs(1)), 1, True),
    "seed-m4": (lambda: dj.seed_imm(_obs(4)), 4, False),
    "seed-m4-independent": (lambda: dj.seed_imm(_obs(4, "independent")), 4, False),
    "seed-m4-exact": (lambda: dj.seed_imm(_obs(4), discretisation="exact"), 4, False),
    "extended-m1": (lambda: dj.seed_imm(_obs(1), extended=True), 1, False),
    "extended-m4": (lambda: dj.seed_imm(_obs(4), extended=True), 4, False),
    "extended-exact-m4": (
        lambda: dj.seed_imm(_obs(4), extended=True, discretisation="exact"),
        4,
        False,
    ),
    # A scalar member inside an extended IMM (mu_dot reset to 0), each member with its own
    # discretisation, and a prior that is not the default.
    "embedded-m4": (
        lambda: _imm(
            (
                dj.OU(0.1, 0.3, "exact"),
                dj.OUAccel(0.02, 1.0, 0.5, 0.5),
                dj.OUAccel(0.005, 5.0, 0.3, 1.0, "exact"),
            ),
            4,
            init_mean=[2.0, -0.5],
            init_cov=[[4.0, 0.3], [0.3, 0.5]],
        ),
        4,
        False,
    ),
    "kalman-m4": (lambda: dj.KalmanModel(dj.OU(0.02, 1.0), _obs(4)), 4, False),
    "kalman-accel-exact-independent": (
        lambda: dj.KalmanModel(
            dj.OUAccel(0.02, 1.0, 0.5, 0.5, "exact"),
            _obs(4, "independent"),
            [1.0, 0.0],
            [[4.0, 0.5], [0.5, 1.0]],
        ),
        4,
        False,
    ),
    # Structural zeros: Pi[Quiet, Crisis] = Pi[Crisis, Quiet] = 0 and a start in Quiet, so
    # cbar_Crisis = 0 at the first cycle (log cbar = -inf, P(Crisis) exactly 0), then > 0.
    "zero-in-pi-m1": (
        lambda: _imm(
            _seed(), 1, [[0.95, 0.05, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.9]], [1, 0, 0]
        ),
        1,
        False,
    ),
    "zero-in-pi-m4": (
        lambda: _imm(
            _seed(), 4, [[0.95, 0.05, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.9]], [1, 0, 0]
        ),
        4,
        False,
    ),
    # Crisis is never reachable: cbar = 0 every cycle; it keeps (and updates) its own state.
    "unreachable-m4": (
        lambda: _imm(
            _seed(), 4, [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.5, 0.5]], [0.5, 0.5, 0]
        ),
        4,
        False,
    ),
    # 0 < cbar_Crisis < sqrt(smallest normal): mixing treats Crisis as unreachable (its own
    # state), its log-probability stays finite (~1e-170) and the likelihood lifts it (5e-49).
    "tiny-cbar-m1": (
        lambda: _imm(
            _seed(), 1, [[0.95, 0.05, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9]], [0.6, 0.4, 1e-170]
        ),
        1,
        False,
    ),
}


def _steps(zs, dt):
    dts = np.broadcast_to(dt, zs.shape[:1])
    return [
        {"z": [None if math.isnan(x) else float(x) for x in row], "dt": float(h)}
        for row, h in zip(zs, dts, strict=True)
    ]


def _config(model):
    return tomllib.loads(dj.config_to_toml(model, RISK))


def _gap(actual, reference) -> float:
    """max |actual - reference| / max(1, |actual|) over all entries."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a)))) if a.size else 0.0


def _column(ref, key):
    return np.array([out[key] for out in ref])


def _check(gaps: dict, label: str):
    worst = max(gaps.values())
    assert worst <= TOL, f"{label}: " + ", ".join(f"{k} {v:.2g}" for k, v in gaps.items())


def _check_alerts(p_crisis, alerts, threshold):
    """``is_crisis`` agrees, except where P(Crisis) is within TOL of the threshold."""
    near = np.abs(np.asarray(p_crisis) - threshold) <= TOL
    same = np.asarray(alerts) == (np.asarray(p_crisis) > threshold)
    assert np.all(same | near)


def filter_gaps(name) -> dict:
    """Per output, the max difference between the reference and ``dj.filter``; checks the
    outputs that must hold exactly on the way."""
    build, m, regular = CASES[name]
    model = build()
    zs, dt = _data(1, m, regular=regular)
    ref = run(_config(model), _steps(zs, dt))
    res = dj.filter(model, zs, dt)
    ll = _column(ref, "log_likelihood")
    gaps = {
        "drift": _gap(res.drift, _column(ref, "drift_rate_per_sec")),
        "drift_variance": _gap(res.drift_var, _column(ref, "drift_variance")),
        "regime_probabilities": _gap(res.regime_probs, _column(ref, "regime_probabilities")),
        "log_likelihood_step": _gap(res.log_likelihoods, _column(ref, "log_likelihood_step")),
        "log_likelihood (running)": _gap(np.cumsum(res.log_likelihoods), ll),
        "log_likelihood (total)": _gap(res.log_likelihood, ll[-1]),
    }
    p_crisis = _column(ref, "p_crisis")
    if isinstance(model, dj.IMMModel):
        gaps["p_crisis"] = _gap(res.p_crisis, p_crisis)
        sigma = res.sigma_effective(RISK.sigma_base, RISK.crisis_amplifier)
        gaps["sigma_effective"] = _gap(sigma, _column(ref, "sigma_effective"))
        assert np.max(p_crisis) > 0.5 or name.startswith(("unreachable", "tiny"))
    else:  # no crisis regime: P(Crisis) = 0, sigma_effective = sigma_base
        assert np.all(p_crisis == 0.0) and not any(_column(ref, "is_crisis"))
        sigma = dj.sigma_effective(RISK.sigma_base, 0.0, RISK.crisis_amplifier)
        assert np.all(_column(ref, "sigma_effective") == float(sigma))
    _check_alerts(p_crisis, _column(ref, "is_crisis"), RISK.threshold)
    # Nothing observed: a pure prediction adding exactly 0.
    empty = np.all(np.isnan(zs), axis=1)
    assert np.all(_column(ref, "log_likelihood_step")[empty] == 0.0)
    return gaps


def streaming_gaps(name) -> dict:
    """Per output, the max difference between the reference and the streaming estimator."""
    build, m, regular = CASES[name]
    model = build()
    zs, dt = _data(2, m, regular=regular, T=200)
    dts = np.broadcast_to(dt, zs.shape[:1])
    ref = run(_config(model), _steps(zs, dt))
    imm = isinstance(model, dj.IMMModel)
    est = dj.IMMDriftEstimator(model) if imm else dj.KalmanDriftEstimator(model)
    got = {k: [] for k in ("drift", "var", "ll", "probs", "alert", "sigma")}
    for z, h in zip(zs, dts, strict=True):
        est = est.update_observation(z, float(h))
        got["drift"].append(float(est.drift_rate_per_sec()))
        got["var"].append(float(est.drift_variance()))
        got["ll"].append(float(est.log_likelihood))
        if imm:
            got["probs"].append(np.asarray(est.regime_probabilities()))
            got["alert"].append(bool(est.is_crisis(RISK.threshold)))
            got["sigma"].append(float(est.sigma_effective(RISK.sigma_base, RISK.crisis_amplifier)))
    gaps = {
        "drift": _gap(got["drift"], _column(ref, "drift_rate_per_sec")),
        "drift_variance": _gap(got["var"], _column(ref, "drift_variance")),
        "log_likelihood": _gap(got["ll"], _column(ref, "log_likelihood")),
    }
    if imm:
        gaps["regime_probabilities"] = _gap(got["probs"], _column(ref, "regime_probabilities"))
        gaps["sigma_effective"] = _gap(got["sigma"], _column(ref, "sigma_effective"))
        _check_alerts(_column(ref, "p_crisis"), got["alert"], RISK.threshold)
    return gaps


@pytest.mark.parametrize("name", list(CASES))
def test_reference_equals_filter(name):
    _check(filter_gaps(name), name)


@pytest.mark.parametrize("name", list(CASES))
def test_reference_equals_streaming_estimator(name):
    _check(streaming_gaps(name), name)


@pytest.mark.parametrize(
    "dynamics",
    [
        dj.OU(0.1, 0.3),
        dj.OU(0.0, 0.6, "exact"),
        dj.OU(1e-5, 2.0, "exact"),  # 2 theta dt < 1e-3: the Taylor branch
        dj.OUAccel(0.02, 1.0, 0.5, 0.5),
        dj.OUAccel(0.005, 5.0, 0.5, 0.5, "exact"),
        dj.OUAccel(0.0, 0.6, 0.0, 0.8, "exact"),  # theta = theta_accel = 0
        dj.OUAccel(0.3, 1.0, 0.3, 2.0, "exact"),  # theta = theta_accel
    ],
    ids=lambda d: f"{type(d).__name__}-{d.discretisation}-{float(d.theta):g}",
)
def test_transition_equals_the_library(dynamics):
    """Step (2)'s (F, Q), embedded in the extended state too; Van Loan in plain Python.

    Measured: at most 1.1e-15 x max(1, |F|) and 1.7e-15 x max(1, |Q|), for the exact
    OUAccel (the reference's Taylor series and JAX's Pade approximant are both within a few
    ulp of the true exponential, checked against a 60-digit Decimal evaluation).
    """
    from drift_jax._models.dynamics import embedded_transition

    regime = _config(dj.KalmanModel(dynamics, _obs(1)))["regimes"][0]
    gap = lambda a, b: np.max(np.abs(a - np.asarray(b))) / max(1.0, np.max(np.abs(a)))
    for n in (dynamics.state_dim, 2):
        for dt in (1e-3, 0.05, 0.37, 1.0, 3.0):
            F, Q = (np.asarray(x) for x in embedded_transition(dynamics, dt, n))
            Fr, Qr = transition(regime, dt, n)
            assert gap(F, Fr) <= 1e-14 and gap(Q, Qr) <= 1e-14, (dt, n, gap(F, Fr), gap(Q, Qr))


def test_golden_file_interface():
    """The form a golden JSON file holds: None or NaN for missing, keys exactly as listed,
    JSON round trip unchanged."""
    model = _config(dj.seed_imm(_obs(4)))
    zs, dt = _data(3, 4, T=40)
    steps = _steps(zs, dt)
    ref = run(model, steps)
    keys = {"drift_rate_per_sec", "drift_variance", "regime_probabilities", "p_crisis"}
    keys |= {"is_crisis", "sigma_effective", "log_likelihood_step", "log_likelihood"}
    assert all(set(out) == keys for out in ref) and len(ref) == len(steps)
    nan_steps = [
        {"z": [math.nan if x is None else x for x in s["z"]], "dt": s["dt"]} for s in steps
    ]
    assert run(model, nan_steps) == ref
    golden = json.loads(
        json.dumps({"model": model, "steps": [s | o for s, o in zip(steps, ref, strict=True)]})
    )
    assert run(golden["model"], golden["steps"]) == ref
    with pytest.raises(ValueError):
        run(model, [{"z": [math.inf, 0.0, 0.0, 0.0], "dt": 0.1}])


def test_hand_written_config_uses_the_library_defaults():
    """Keys left out (discretisation, update, init_*, crisis_regime, threshold, and
    cov_cholesky with cov given) take the defaults ``dj.config_from_toml`` gives them."""
    text = """
schema_version = 1
kind = "imm"
transition = [[0.9, 0.1], [0.2, 0.8]]
[[regimes]]
dynamics = "OU"
theta = 0.1
sigma = 0.3
[[regimes]]
dynamics = "OUAccel"
theta = 0.005
sigma = 5.0
theta_accel = 0.5
sigma_accel = 0.5
[observation]
loadings = [1.0, 0.8]
cov = [[4.0, 2.8], [2.8, 4.0]]
[risk]
sigma_base = 10.0
crisis_amplifier = 2.0
"""
    cfg = dj.config_from_toml(text)
    rng = np.random.default_rng(4)
    zs = rng.normal(-20.0, 2.0, (50, 2))
    zs[::7, 0] = np.nan
    ref = run(tomllib.loads(text), _steps(zs, 0.25))
    res = dj.filter(cfg.model, zs, 0.25)
    assert _gap(res.drift, _column(ref, "drift_rate_per_sec")) <= TOL
    assert _gap(res.drift_var, _column(ref, "drift_variance")) <= TOL
    assert _gap(res.regime_probs, _column(ref, "regime_probabilities")) <= TOL
    assert _gap(res.log_likelihoods, _column(ref, "log_likelihood_step")) <= TOL
    # crisis_regime: the last regime (none is named "Crisis"); threshold 0.3.
    assert _gap(res.p_crisis, _column(ref, "p_crisis")) <= TOL
    assert np.all(_column(ref, "p_crisis") == _column(ref, "regime_probabilities")[:, 1])
    _check_alerts(_column(ref, "p_crisis"), _column(ref, "is_crisis"), 0.3)


if __name__ == "__main__":  # the measured table: python -m tests.test_reference_imm
    import jax

    jax.config.update("jax_enable_x64", True)  # as tests/conftest.py; models are built lazily
    for case in CASES:
        a, b = filter_gaps(case), streaming_gaps(case)
        top = lambda g: max(g, key=g.get)
        print(
            f"{case:32s} filter {a[top(a)]:.1e} ({top(a)})  streaming {b[top(b)]:.1e} ({top(b)})"
        )


def _revival():
    """Crisis starts at probability 1e-170 and only Crisis feeds it (Pi[:, Crisis] = [0, 0,
    0.9]): cbar_Crisis < sqrt(smallest normal), so the mixing treats it as unreachable. A
    jump to -50 bps/s seen with noise std 0.5 then makes its likelihood dominate."""
    rng = np.random.default_rng(0)
    T, jump = 120, 50
    k = np.arange(T)
    mu = np.where(k > jump, -50.0 + np.cumsum(5.0 * rng.standard_normal(T) * (k > jump)), 0.0)
    zs = (mu + 0.5 * rng.standard_normal(T))[:, None]
    Pi = [[0.95, 0.05, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9]]
    names = ("Quiet", "Trending", "Crisis")
    obs = dj.Observation([1.0], [[0.25]])
    model = dj.IMMModel(_seed(), obs, Pi, [0.6, 0.4, 1e-170], regime_names=names)
    return model, zs, run(_config(model), _steps(zs, 0.1))


def test_revived_regime_reference_equals_the_general_cycle():
    """The reference keeps the tiny log-probability, as the general cycle does (the
    streaming estimator; imm_filter with scalar_path=False), and P(Crisis) goes to 1."""
    from drift_jax._filters.imm import imm_filter

    model, zs, ref = _revival()
    assert max(_column(ref, "p_crisis")) > 0.99
    general = imm_filter(model, zs, 0.1, scalar_path=False)
    assert _gap(general.regime_probs, _column(ref, "regime_probabilities")) <= TOL
    assert _gap(general.drift, _column(ref, "drift_rate_per_sec")) <= TOL
    assert _gap(general.log_likelihood, ref[-1]["log_likelihood"]) <= TOL
    est, probs = dj.IMMDriftEstimator(model), []
    for z in zs:
        est = est.update_observation(z, 0.1)
        probs.append(np.asarray(est.regime_probabilities()))
    assert _gap(probs, _column(ref, "regime_probabilities")) <= TOL


def test_revived_regime_reference_equals_filter():
    model, zs, ref = _revival()
    res = dj.filter(model, zs, 0.1)
    assert _gap(res.regime_probs, _column(ref, "regime_probabilities")) <= TOL
