"""The scalar IMM's two loops (drift_jax/_filters/imm_scalar.py): the vector loop that
one series runs and the loop unrolled over the regimes that a batch runs compute the
same cycle. Both are compared here on the shapes the scalar path serves; they agree to
rounding (XLA fuses the two programs differently: ~1e-13 relative on the drift, as a
single series and the same series inside a batch did before there were two loops)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj
from drift_jax._filters import imm as imm_module
from drift_jax._filters.loop_choice import loop_kind, scalar_loop

FIELDS = (
    "log_likelihood",
    "log_likelihoods",
    "drift",
    "drift_var",
    "regime_probs",
    "predicted_regime_probs",
    "model_drifts",
    "model_drift_vars",
)


def _models():
    four = dj.default_observation()
    rates = jnp.array([[-0.02, 0.015, 0.005], [0.05, -0.08, 0.03], [0.1, 0.1, -0.2]])
    return {
        "one feature": dj.seed_imm(dj.Observation.scalar(4.0)),
        "four features": dj.seed_imm(four),
        "student-t": dj.seed_imm(dj.Observation.scalar(4.0, robust=dj.StudentT(4.0))),
        "rates": dj.IMMModel(dj.seed_imm().dynamics, dj.Observation.scalar(4.0), rates=rates),
    }


def _run(model, zs, dt, loop):
    adjoint = model.default_adjoint()
    return imm_module._imm_scan(model, zs, dt, adjoint, True, None, loop)


@pytest.mark.parametrize("name", list(_models()))
def test_vector_and_unrolled_loops_agree(name):
    model = _models()[name]
    rng = np.random.default_rng(4)
    T, m = 600, model.num_features
    zs = rng.normal(size=(T, m)) * 3.0
    zs[100:140] += 40.0  # a jump: the crisis regime wakes up
    zs[rng.random((T, m)) < 0.1] = np.nan  # missing components
    zs[300:305] = np.nan  # empty steps
    dt = rng.exponential(0.5, size=T)
    dt[50] = 0.0  # an equal timestamp
    zs, dt = jnp.asarray(zs), jnp.asarray(dt)
    (vec, vec_end), (unr, unr_end) = _run(model, zs, dt, "vector"), _run(model, zs, dt, "unrolled")
    for f in FIELDS:
        a, b = np.asarray(getattr(vec, f)), np.asarray(getattr(unr, f))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f)
    for a, b in zip(jax.tree.leaves(vec_end), jax.tree.leaves(unr_end), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    assert np.isfinite(float(vec.log_likelihood))


def test_gradients_of_the_two_loops_agree():
    model = _models()["one feature"]
    rng = np.random.default_rng(5)
    zs = jnp.asarray(rng.normal(size=(300, 1)) * 3.0)
    dt = jnp.asarray(0.5)

    def ll(mdl, loop):
        return _run(mdl, zs, dt, loop)[0].log_likelihood

    gv = jax.grad(ll)(model, "vector")
    gu = jax.grad(ll)(model, "unrolled")
    for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(gu), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


def test_which_loop_runs_where(monkeypatch):
    from drift_jax._filters import imm_scalar

    seen = []
    for kind in ("_vector_filter", "_unrolled_filter"):
        original = getattr(imm_scalar, kind)

        def spy(*args, _original=original, _kind=kind, **kwargs):
            seen.append(_kind)
            return _original(*args, **kwargs)

        monkeypatch.setattr(imm_scalar, kind, spy)
    model = dj.seed_imm(dj.Observation.scalar(4.0))
    zs = np.random.default_rng(6).normal(size=(2, 90))
    dj.filter(model, zs[0], 0.5, method=dj.Sequential())
    assert seen == ["_vector_filter"]  # one series
    jax.vmap(lambda z: dj.filter(model, z, 0.5, method=dj.Sequential()))(zs)
    assert seen[1:] == ["_unrolled_filter"]  # a batch
    dj.filter(model, np.tile(zs[0], 30), 0.5, method=dj.Chunked(chunk_size=300))
    assert set(seen[2:]) == {"_unrolled_filter"}  # the chunks are a batch
    assert loop_kind() == "unrolled"
    with scalar_loop("vector"):
        assert loop_kind() == "vector"
    assert loop_kind() == "unrolled"
