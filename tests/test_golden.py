"""Golden vectors (dj.golden_vectors -> JSON) are reproduced by the plain-Python reference
(tests/reference_imm.py), by dj.filter and by the streaming estimator, to 1e-13 relative to
max(1, |value|); the inputs read back from the file bit for bit.

The golden numbers come from XLA (dj.filter), so they are not specified bit for bit across
machines: the comparisons are to 1e-13, and only the inputs and the file's own round trip
(repr floats) are compared exactly.
"""

import math

import jax
import numpy as np
import pytest

import drift_jax as dj
from drift_jax._io.golden import _toml_loads
from drift_jax._simulation.synthetic import default_feature_cov, default_loadings

from .reference_imm import run

TOL = 1e-13
RISK = dj.RiskModel(sigma_base=10.0, crisis_amplifier=2.0, threshold=0.3)
OUTPUTS = (
    "drift_rate_per_sec",
    "drift_variance",
    "p_crisis",
    "sigma_effective",
    "log_likelihood_step",
    "log_likelihood",
)


def cascade_inputs(m: int, seed: int = 0, T: int = 400):
    """Irregular steps (exponential gaps, mean 0.1 s), a drift falling to -50 bps/s 15 s in,
    ``m`` correlated features (the 4-feature defaults' first ``m``), 10% of the components
    missing and 4% of the steps with nothing observed."""
    rng = np.random.default_rng(seed)
    dt = rng.exponential(0.1, T) + 1e-3
    t = np.cumsum(dt)
    mu = np.where(t > 15.0, -50.0 * np.minimum(1.0, (t - 15.0) / 2.0), 0.0)
    a, R = default_loadings()[:m], default_feature_cov()[:m, :m]
    z = mu[:, None] * a + rng.multivariate_normal(np.zeros(m), R, T)
    z[rng.random((T, m)) < 0.10] = np.nan
    z[rng.random(T) < 0.04] = np.nan
    return dj.Observation(a, R), z, dt, t


def models():
    obs1, *_ = cascade_inputs(1)
    obs4, *_ = cascade_inputs(4)
    return {
        "seed-imm-1-feature": dj.seed_imm(obs1),
        "seed-imm-4-features": dj.seed_imm(obs4),
        "seed-imm-4-features-extended": dj.seed_imm(obs4, extended=True),
        "kalman-4-features": dj.KalmanModel(dj.OU(0.02, 1.0), obs4, 0.0, 1.0),
    }


def _gap(a, b) -> float:
    return abs(a - b) / max(1.0, abs(b))


def _worst(rows, steps, keys=OUTPUTS) -> float:
    worst = 0.0
    for got, want in zip(rows, steps, strict=True):
        worst = max(worst, *(_gap(got[k], want[k]) for k in keys))
        probs = zip(got["regime_probabilities"], want["regime_probabilities"], strict=True)
        worst = max(worst, *(_gap(a, b) for a, b in probs))
        assert got["is_crisis"] == want["is_crisis"]
    return worst


@pytest.fixture(scope="module", params=list(models()))
def golden(request, tmp_path_factory):
    model = models()[request.param]
    m = model.num_features
    _, z, dt, t = cascade_inputs(m)
    path = tmp_path_factory.mktemp("golden") / f"{request.param}.json"
    dj.save_golden(path, dj.golden_vectors(model, z, dt, risk=RISK, times=t))
    return request.param, model, z, dt, dj.load_golden(path)


def test_inputs_read_back_exactly(golden):
    _, model, z, dt, g = golden
    zs = np.array([[math.nan if x is None else x for x in s["z"]] for s in g["steps"]])
    np.testing.assert_array_equal(zs, z)  # repr floats and null <-> NaN: exact
    assert [s["dt"] for s in g["steps"]] == dt.tolist()
    assert g["num_features"] == model.num_features and g["num_steps"] == len(dt)
    assert g["model"] == _toml_loads(g["config_toml"])
    empty = [s for s in g["steps"] if all(x is None for x in s["z"])]
    assert empty and all(s["log_likelihood_step"] == 0.0 for s in empty)


def test_reference_reproduces_golden(golden):
    """The production contract: from the file alone (model object + steps), a plain-Python
    cycle gives the golden outputs (measured max gap <= 1.2e-14 over these cases)."""
    name, _, _, _, g = golden
    rows = run(g["model"], g["steps"])
    assert _worst(rows, g["steps"]) <= TOL, name


def test_filter_reproduces_golden(golden):
    _, model, z, dt, g = golden
    res = dj.filter(model, z, dt)
    steps = g["steps"]
    np.testing.assert_allclose(res.drift, [s["drift_rate_per_sec"] for s in steps], rtol=TOL)
    np.testing.assert_allclose(res.drift_var, [s["drift_variance"] for s in steps], rtol=TOL)
    np.testing.assert_allclose(
        res.log_likelihoods, [s["log_likelihood_step"] for s in steps], rtol=TOL, atol=TOL
    )
    assert float(res.log_likelihood) == pytest.approx(steps[-1]["log_likelihood"], rel=TOL)


def test_streaming_reproduces_golden(golden):
    """Step by step through ``update_observation``; the estimator keeps the running
    log-likelihood (not the step's), so that is what is compared."""
    name, model, _, _, g = golden
    imm = isinstance(model, dj.IMMModel)
    est = (dj.IMMDriftEstimator if imm else dj.KalmanDriftEstimator)(model)
    rows = []
    for s in g["steps"]:
        est = est.update_observation([math.nan if x is None else x for x in s["z"]], s["dt"])
        p_crisis = float(est.p_crisis()) if imm else 0.0
        rows.append(
            {
                "drift_rate_per_sec": float(est.drift_rate_per_sec()),
                "drift_variance": float(est.drift_variance()),
                "regime_probabilities": (
                    np.asarray(est.regime_probabilities()).tolist() if imm else [1.0]
                ),
                "p_crisis": p_crisis,
                "is_crisis": bool(est.is_crisis(RISK.threshold)) if imm else False,
                "sigma_effective": float(RISK.sigma_effective(p_crisis)),
                "log_likelihood": float(est.log_likelihood),
            }
        )
    keys = tuple(k for k in OUTPUTS if k != "log_likelihood_step")
    assert _worst(rows, g["steps"], keys) <= TOL, name


def test_regimes_in_the_golden_file(golden):
    """The IMM cases exercise the regime switch (P(Crisis) crosses the threshold 15-18 s in,
    after the fall, and not before 14 s); a Kalman model is the one-regime case."""
    name, model, _, _, g = golden
    if isinstance(model, dj.IMMModel):
        alarms = [s["t"] for s in g["steps"] if s["is_crisis"]]
        assert any(15.0 < t < 18.0 for t in alarms), name
        assert g["regime_names"] == ["Quiet", "Trending", "Crisis"]
    else:
        assert all(s["regime_probabilities"] == [1.0] for s in g["steps"])
        assert all(s["p_crisis"] == 0.0 and not s["is_crisis"] for s in g["steps"])
        assert all(s["sigma_effective"] == 10.0 for s in g["steps"])


def test_golden_needs_a_model():
    with pytest.raises(TypeError, match="`model` must be a dj.KalmanModel or dj.IMMModel"):
        dj.golden_vectors("imm", np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="not a drift_jax golden file"):
        dj.save_golden("x.json", {"steps": []})


def test_golden_float32_model_is_labelled(tmp_path):
    """A float32 model's golden file says so (its numbers are float32's, read as float64)."""
    obs = dj.Observation(np.float32(1.0), np.float32(4.0))
    imm = dj.seed_imm(obs, dtype=jax.numpy.float32)
    g = dj.golden_vectors(imm, np.array([1.0, 2.0, np.nan]), 0.5)
    assert g["dtype"] == "float32" and 'dtype = "float32"' in g["config_toml"]
