"""Property-based tests: for random valid models and wild data, the IMM's regime
probabilities stay on the simplex and its variances stay positive.

Models: 2-3 regimes, scalar / extended / mixed members (``theta`` in [0, 2] with exact
zeros, ``sigma`` in [0, 10] with exact zeros), transition rows and ``init_probs`` with
exact zeros, feature noise sd from 0.1 to 10 with correlations up to 0.9. Data: ordinary
values, outliers up to 1e6 in magnitude, and NaN (single features and whole steps).
A few model structures are drawn from a fixed list so the compilations stay few.
"""

import equinox as eqx
import hypothesis.strategies as st
import numpy as np
from hypothesis import HealthCheck, given, settings

import drift_jax as dj

from .conftest import correlated_cov

T = 16
_filter = eqx.filter_jit(dj.filter)

# (member kinds, features m, update): "s" scalar OU, "e" extended OUAccel.
STRUCTURES = [("sss", 1, "joint"), ("se", 2, "independent"), ("eee", 3, "joint")]

unit = st.floats(0.0, 1.0)
rate = st.one_of(st.just(0.0), st.floats(1e-3, 2.0))
noise = st.one_of(st.just(0.0), st.floats(1e-2, 10.0))


@st.composite
def stochastic_vector(draw, M):
    w = np.array([draw(st.one_of(st.just(0.0), st.floats(1e-3, 1.0))) for _ in range(M)])
    if w.sum() == 0.0:
        w[draw(st.integers(0, M - 1))] = 1.0
    return w / w.sum()


@st.composite
def model_specs(draw):
    """The numbers of a random valid model (built in the test, outside the strategy)."""
    kinds, m, update = draw(st.sampled_from(STRUCTURES))
    M = len(kinds)
    members = []
    for kind in kinds:
        k = 2 if kind == "s" else 4
        members.append(tuple(draw(rate if i % 2 == 0 else noise) for i in range(k)))
    sds = np.array([draw(st.floats(0.1, 10.0)) for _ in range(m)])
    return {
        "members": members,
        "Pi": np.stack([draw(stochastic_vector(M)) for _ in range(M)]),
        "p0": draw(stochastic_vector(M)),
        "R": correlated_cov(sds, draw(st.floats(-0.4, 0.9)) if m > 1 else 0.0),
        "loadings": np.array([draw(st.floats(0.2, 2.0)) for _ in range(m)]),
        "update": update,
        "init_mean": draw(st.floats(-5.0, 5.0)),
        "init_var": draw(st.floats(0.01, 10.0)),
    }


def build(spec) -> dj.IMMModel:
    dynamics = [dj.OU(*p) if len(p) == 2 else dj.OUAccel(*p) for p in spec["members"]]
    obs = dj.Observation(spec["loadings"], spec["R"], update=spec["update"])
    return dj.IMMModel(dynamics, obs, spec["Pi"], spec["p0"], spec["init_mean"], spec["init_var"])


value = st.one_of(
    st.floats(-50.0, 50.0),
    st.floats(-1e6, 1e6),
    st.sampled_from([1e6, -1e6, np.nan]),
)


@st.composite
def series(draw, m):
    zs = np.array([[draw(value) for _ in range(m)] for _ in range(T)])
    if draw(st.booleans()):
        zs[draw(st.integers(0, T - 1))] = np.nan  # a step with nothing observed
    dt = np.array([draw(st.floats(0.01, 2.0)) for _ in range(T)])
    return zs, dt


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_probabilities_on_simplex_and_variances_positive(data):
    imm = build(data.draw(model_specs()))
    zs, dt = data.draw(series(imm.num_features))
    res = _filter(imm, zs, dt)

    for probs in (np.asarray(res.regime_probs), np.asarray(res.predicted_regime_probs)):
        assert np.all(np.isfinite(probs))
        assert np.all(probs >= 0.0) and np.all(probs <= 1.0 + 1e-12)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    assert np.all(np.isfinite(np.asarray(res.means)))
    assert np.all(np.isfinite(np.asarray(res.model_means)))
    assert np.all(np.asarray(res.drift_var) > 0.0)
    model_vars = np.diagonal(np.asarray(res.model_covs), axis1=-2, axis2=-1)
    assert np.all(np.isfinite(model_vars))
    # The drift's variance is positive; a scalar member embedded in the extended state
    # has its mu_dot reset to 0, so that variance may be exactly 0 (never negative).
    assert np.all(model_vars[..., 0] > 0.0) and np.all(model_vars >= 0.0)
    mix_vars = np.diagonal(np.asarray(res.covs), axis1=-2, axis2=-1)
    assert np.all(mix_vars[..., 0] > 0.0) and np.all(mix_vars >= 0.0)
    lls = np.asarray(res.log_likelihoods)
    assert np.all(np.isfinite(lls)) and np.isfinite(float(res.log_likelihood))
    nothing = np.all(np.isnan(zs), axis=1)
    assert np.all(lls[nothing] == 0.0)
