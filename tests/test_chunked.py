"""Parallel-in-time filtering by chunks and sweeps (issue 11, item 1): ``dj.Chunked``.

Chunked equals sequential -- the log-likelihood, every per-step output and the gradients
-- to 1e-10 on every model shape (scalar / extended / mixed IMM, m features, Kalman),
with missing data and irregular dt, for chunk sizes that do not divide T; also on a
filter that forgets slowly (Kalman gain ~1e-3: many sweeps, still exact). The result
reports the sweeps; ``method=None`` picks the chunked filter by length; forward mode
raises the method error; losses, fit and standard errors take the method.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import drift_jax as dj

T = 240
RNG = np.random.default_rng(7)
OBS2 = dj.Observation([1.0, 0.8], [[1.0, 0.3], [0.3, 2.0]])
OBS4 = dj.Observation([1.0, 0.8, 0.5, 1.2], np.eye(4) * 0.5 + 0.2)
DTS = RNG.uniform(0.2, 0.9, size=T)


def _features(m: int, missing: bool = True) -> np.ndarray:
    drift = np.cumsum(RNG.normal(scale=0.4, size=T))
    zs = drift[:, None] * np.linspace(1.0, 0.6, m) + RNG.normal(size=(T, m))
    if missing:
        zs[5, 0] = np.nan  # a partly observed step (a missing feature)
        zs[17] = np.nan  # nothing observed: a pure prediction
        zs[100:104] = np.nan  # a gap across a chunk boundary for some chunk sizes
    return zs


def _mixed(obs):
    return dj.IMMModel(
        (dj.OU(0.1, 0.3), dj.OUAccel(0.05, 1.0, 0.5, 0.5), dj.OU(0.01, 4.0)),
        obs,
        dj.SEED_TRANSITION,
        regime_names=dj.REGIME_NAMES,
    )


# (model, features, dt): every IMM shape and the Kalman filter, regular and irregular dt.
CASES = {
    "imm-scalar-1": (dj.seed_imm(), _features(1), 0.5),
    "imm-scalar-4": (dj.seed_imm(OBS4), _features(4), DTS),
    "imm-extended-2": (dj.seed_imm(OBS2, extended=True), _features(2), DTS),
    "imm-mixed-2": (_mixed(OBS2), _features(2), 0.5),
    "kalman-ou-4": (dj.KalmanModel(dj.OU(0.2, 0.8), OBS4, 0.0, 2.0), _features(4), DTS),
    "kalman-accel-2": (
        dj.KalmanModel(dj.OUAccel(0.2, 0.8, 0.4, 0.3), OBS2, 0.0, [1.0, 0.5]),
        _features(2),
        0.5,
    ),
}


def _loss(model, zs, dt, method):
    # Several outputs enter, so every cotangent of the result is exercised.
    r = dj.filter(model, zs, dt, method=method)
    return r.log_likelihood + 0.1 * jnp.sum(r.drift) + jnp.sum(r.drift_var), r


_value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(_loss, has_aux=True))
_forward = eqx.filter_jit(lambda model, zs, dt, method: dj.filter(model, zs, dt, method=method))


def _close(a, b, tol):
    a, b = np.asarray(a), np.asarray(b)
    scale = np.maximum(1.0, np.abs(b))
    err = np.nanmax(np.abs(a - b) / scale) if a.size else 0.0
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert err <= tol, err


def _per_step(res):
    """The per-step outputs of a result (everything with a time axis)."""
    return [x for x in jax.tree.leaves(eqx.filter(res, eqx.is_array)) if np.ndim(x) >= 1]


# Gradients on a case of each cycle (the scalar cycle with the m-feature reduction, the
# general cycle with an embedded member, the Kalman filter with both state sizes); values
# on the rest (compiling a reverse pass of the general IMM cycle takes ~10 s).
WITH_GRADIENTS = ("imm-scalar-4", "imm-mixed-2", "kalman-ou-4", "kalman-accel-2")


@pytest.mark.parametrize("name", list(CASES))
def test_chunked_equals_sequential(name):
    model, zs, dt = CASES[name]
    if name in WITH_GRADIENTS:
        (v_seq, r_seq), g_seq = _value_and_grad(model, zs, dt, dj.Sequential())
        (v_chk, r_chk), g_chk = _value_and_grad(model, zs, dt, dj.Chunked(chunk_size=37))
    else:
        r_seq = _forward(model, zs, dt, dj.Sequential())
        r_chk = _forward(model, zs, dt, dj.Chunked(chunk_size=37))
        v_seq = v_chk = g_seq = g_chk = 0.0
    assert r_chk.chunked.num_chunks == 7 and r_chk.chunked.chunk_size == 37  # 7 x 37 > 240
    assert 1 <= int(r_chk.chunked.sweeps) <= 7
    assert float(r_chk.chunked.boundary_change) <= 100 * np.finfo(np.float64).eps
    assert abs(float(r_chk.log_likelihood - r_seq.log_likelihood)) <= 1e-10 * abs(
        float(r_seq.log_likelihood)
    )
    seq_steps = [x for x in _per_step(r_seq) if x.shape[:1] == (T,)]
    chk_steps = [x for x in _per_step(r_chk) if x.shape[:1] == (T,)]
    assert len(seq_steps) == len(chk_steps) >= 5
    for a, b in zip(chk_steps, seq_steps, strict=True):
        _close(a, b, 1e-10)
    _close(v_chk, v_seq, 1e-12)
    for a, b in zip(jax.tree.leaves(g_chk), jax.tree.leaves(g_seq), strict=True):
        _close(a, b, 1e-10)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk=st.integers(min_value=2, max_value=T), check=st.integers(min_value=1, max_value=40))
def test_any_chunk_size_is_exact(chunk, check):
    # Each chunk size compiles anew: the scalar Kalman filter, the cheapest to compile.
    model = dj.KalmanModel(dj.OU(0.2, 0.8), dj.Observation.scalar(1.5), 0.0, 2.0)
    zs, dt = _features(1), DTS
    seq = _forward(model, zs, dt, dj.Sequential())
    res = _forward(model, zs, dt, dj.Chunked(chunk_size=chunk, check_steps=check))
    assert res.chunked.num_chunks == -(-T // chunk)
    _close(res.log_likelihoods, seq.log_likelihoods, 1e-10)
    _close(res.innovations, seq.innovations, 1e-10)
    _close(res.means, seq.means, 1e-10)
    _close(res.covs, seq.covs, 1e-10)


def test_slowly_forgetting_filter_takes_many_sweeps_and_stays_exact():
    # A tiny process noise against a large observation noise: steady-state Kalman gain
    # ~1e-3, so a start is forgotten only over thousands of steps and every sweep passes
    # exact information one chunk further: the check must not stop early.
    model = dj.KalmanModel(dj.OU(0.0, 0.01), dj.Observation.scalar(100.0), 0.0, 10.0)
    n = 400
    zs = np.cumsum(RNG.normal(scale=0.01, size=n)) + RNG.normal(scale=10.0, size=n)
    dt = 1.0
    gain = float(
        dj.filter(model, zs, dt).covs[-1, 0, 0] / model.observation.cov[0, 0]
    )  # P / R: the steady-state gain
    assert 5e-4 < gain < 5e-3
    seq = dj.filter(model, zs, dt, method=dj.Sequential())
    res = dj.filter(model, zs, dt, method=dj.Chunked(chunk_size=50))
    assert int(res.chunked.sweeps) >= 6  # of 8 chunks: nearly the sequential worst case
    _close(res.means, seq.means, 1e-10)
    _close(res.covs, seq.covs, 1e-10)
    f = lambda m, meth: dj.filter(m, zs, dt, method=meth).log_likelihood  # noqa: E731
    g_seq = jax.grad(f)(model, dj.Sequential())
    g_chk = jax.grad(f)(model, dj.Chunked(chunk_size=50))
    for a, b in zip(jax.tree.leaves(g_chk), jax.tree.leaves(g_seq), strict=True):
        _close(a, b, 1e-10)
    # A cap below what is needed stops early and says so in the report.
    capped = dj.filter(model, zs, dt, method=dj.Chunked(chunk_size=50, max_sweeps=2))
    assert int(capped.chunked.sweeps) == 2
    assert float(capped.chunked.boundary_change) > 1e-6


def test_convergence_report_on_a_forgetting_model():
    model, zs, dt = CASES["imm-scalar-1"]
    # The seed IMM forgets a start by a factor ~0.87 per step: after a chunk of 120 steps
    # the starts of sweep 2 are off by ~1e-7, after 2 chunks' worth (sweep 3) by ~1e-14.
    # Shorter chunks need more sweeps; none needs as many as it has chunks.
    sweeps = {}
    for L in (30, 120):
        res = _forward(model, zs, dt, dj.Chunked(chunk_size=L))
        info = res.chunked
        assert (info.chunk_size, info.num_chunks) == (L, T // L)
        assert 0.0 <= float(info.boundary_change) <= 2.3e-14
        sweeps[L] = int(info.sweeps)
    assert 2 <= sweeps[120] < sweeps[30] < T // 30
    assert dj.filter(model, zs, dt, method=dj.Sequential()).chunked is None


def test_method_none_picks_by_length_and_forward_mode():
    model = dj.KalmanModel(dj.OU(0.2, 0.8), dj.Observation.scalar(1.0))
    long = np.sin(np.arange(10_000) / 40.0)
    assert dj.filter(model, long, 0.5).chunked.num_chunks == 40
    assert dj.filter(model, long[:9_999], 0.5).chunked is None  # below AUTO_CHUNKED_STEPS
    # Under vmap over paths the batch fills the lanes: sequential.
    batch = jax.vmap(lambda z: dj.filter(model, z, 0.5))(np.stack([long, long]))
    assert batch.chunked is None

    # Forward mode through the default on a long series: the sequential filter (reverse
    # mode: the chunked one), the same derivative. (An IMM: the Kalman model's default
    # sequential reverse pass, the fused adjoint, has no forward mode of its own.)
    def f(sigma):
        m = dj.IMMModel(
            (dj.OU(0.1, 0.3), dj.OU(0.02, sigma)),
            dj.Observation.scalar(1.0),
            [[0.99, 0.01], [0.02, 0.98]],
        )
        return dj.filter(m, long, 0.5).log_likelihood

    _, tangent = jax.jvp(f, (1.0,), (1.0,))
    assert abs(float(jax.grad(f)(1.0)) - float(tangent)) <= 1e-9 * abs(float(tangent))
    # An explicit chunked method under jax.jvp: the method error, naming a fix.
    with pytest.raises(TypeError, match=r"method=dj\.Chunked\(adjoint=dj\.FusedAdjoint\(\)\)"):
        jax.jvp(
            lambda th: (
                dj.filter(
                    dj.KalmanModel(dj.OU(th, 0.8), dj.Observation.scalar(1.0)),
                    long[:200],
                    0.5,
                    method=dj.Chunked(chunk_size=50),
                ).log_likelihood
            ),
            (0.2,),
            (1.0,),
        )
    assert dj.filter(model, long[:300], 0.5, method="chunked").chunked.num_chunks == 2


def test_losses_and_fit_take_the_chunked_method():
    model, zs, dt = CASES["imm-scalar-1"]
    chunked = dj.Chunked(chunk_size=50)
    a = float(dj.feature_nll(model, zs, dt, method=chunked))
    b = float(dj.feature_nll(model, zs, dt, method=dj.Sequential()))
    assert abs(a - b) <= 1e-12 * abs(b)
    # The fit passes the method on (the chunked IMM's gradients are checked above, in
    # test_chunked_equals_sequential): a Kalman model, whose fits compile in seconds.
    model = dj.KalmanModel(dj.OU(0.2, 0.8), dj.Observation.scalar(1.5), 0.0, 2.0)
    fit_c = dj.fit(model, zs, dt, method=chunked, steps=5, progress=False)
    fit_s = dj.fit(model, zs, dt, method=dj.Sequential(), steps=5, progress=False)
    assert int(fit_c.num_steps) == int(fit_s.num_steps) > 0
    for x, y in zip(jax.tree.leaves(fit_c.model), jax.tree.leaves(fit_s.model), strict=True):
        _close(x, y, 1e-9)


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="chunk_size"):
        dj.Chunked(chunk_size=0)
    with pytest.raises(TypeError, match="check_steps"):
        dj.Chunked(check_steps=2.5)
    with pytest.raises(ValueError, match="max_sweeps"):
        dj.Chunked(max_sweeps=-1)
    with pytest.raises(ValueError, match="tol"):
        dj.Chunked(tol=-1e-3)
    with pytest.raises(TypeError, match="adjoint"):
        dj.Chunked(adjoint="fused")
    assert dj.Chunked(chunk_size=64) == dj.Chunked(chunk_size=64)
    assert hash(dj.Chunked(chunk_size=64)) == hash(dj.Chunked(chunk_size=64))
