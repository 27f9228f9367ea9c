"""Constrained <-> unconstrained parameters (issue 5, item 1): round trips, validity of every
image (hypothesis), full rank of the free coordinates, fixed fields kept bit for bit,
structural zeros, and the forms of `trainable`."""

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.flatten_util import ravel_pytree

import drift_jax as dj


def _imm(extended=True):
    obs = dj.Observation([1.0, 0.8], [[1.0, 0.3], [0.3, 2.0]])
    return dj.seed_imm(obs, extended=extended, init_cov=[[1.0, 0.2], [0.2, 0.5]])


def _params():
    return dj.FitParams(_imm(), dj.RiskModel(2.0, 1.5))


def _kalman(theta=0.3):
    obs = dj.Observation([1.0, -0.5, 0.7], [[1.0, 0.3, 0.1], [0.3, 2.0, -0.2], [0.1, -0.2, 0.8]])
    return dj.KalmanModel(
        dj.OUAccel(theta, 0.9, 0.5, 0.4), obs, [0.1, -0.2], [[1.0, 0.1], [0.1, 0.3]]
    )


def _leaves_equal(a, b) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


@pytest.mark.parametrize("make", [_params, _kalman, lambda: dj.seed_imm()])
def test_round_trip(make):
    params = make()
    raw = dj.unconstrain(params)
    back = dj.constrain(raw, params)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


def test_free_coordinates_have_full_rank():
    # 3 regimes x 4 OUAccel fields + loadings (2) + R's Cholesky (3) + Pi (3 x 2 free logits)
    # + init_probs (2) + init_mean (2) + init_cov's Cholesky (3) + risk (2).
    params = _params()
    raw = dj.unconstrain(params)
    flat, unravel = ravel_pytree(raw)
    assert flat.shape == (12 + 2 + 3 + 6 + 2 + 2 + 3 + 2,)

    def values(x):
        return ravel_pytree(dj.constrain(unravel(x), params))[0]

    J = np.asarray(jax.jit(jax.jacfwd(values))(flat))
    # No flat direction (a softmax over all M logits, or a full [n, n] raw Cholesky
    # matrix, would have one): the Jacobian has full column rank, as a Hessian needs.
    assert np.linalg.matrix_rank(J) == flat.size
    assert np.linalg.svd(J, compute_uv=False).min() > 1e-3


def test_reference_entry_is_the_largest():
    imm = dj.IMMModel(
        (dj.OU(0.1, 0.3), dj.OU(0.02, 1.0), dj.OU(0.005, 5.0)),
        dj.Observation.scalar(1.0),
        [[0.2, 0.7, 0.1], [0.05, 0.9, 0.05], [0.0, 0.4, 0.6]],
        [0.1, 0.3, 0.6],
    )
    raw = dj.unconstrain(imm, lambda m: (m.transition, m.init_probs))
    assert raw.transition.ref == (1, 1, 2)
    assert raw.init_probs.ref == (2,)
    np.testing.assert_allclose(raw.transition.raw[0], np.log([0.2 / 0.7, 0.1 / 0.7]), rtol=1e-14)


def _random_raw(params, values):
    raw = dj.unconstrain(params)
    flat, unravel = ravel_pytree(raw)
    return unravel(jnp.asarray(np.resize(values, flat.shape), flat.dtype))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-12.0, 12.0), min_size=35, max_size=35))
def test_every_image_is_a_valid_model(values):
    params = _params()
    fitted = dj.constrain(_random_raw(params, values), params)
    imm, risk = fitted
    Pi = np.asarray(imm.transition)
    assert np.all(Pi >= 0)
    np.testing.assert_allclose(Pi.sum(axis=1), 1.0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.sum(imm.init_probs), 1.0, rtol=0, atol=1e-13)
    L = np.asarray(imm.observation.cov_chol)
    assert np.array_equal(L, np.tril(L)) and np.all(np.diag(L) > 0)
    for S in (np.asarray(imm.observation.cov), np.asarray(imm.init_cov)):
        np.testing.assert_array_equal(S, S.T)
        np.linalg.cholesky(S)  # SPD (raises otherwise)
    positives = [getattr(d, f) for d in imm.dynamics for f in ("theta", "sigma")]
    positives += [risk.sigma_base, risk.crisis_amplifier]
    assert all(float(x) > 0 for x in positives)
    # The constructors' own validation accepts the image.
    dj.IMMModel(
        imm.dynamics,
        dj.Observation(imm.observation.loadings, imm.observation.cov),
        imm.transition,
        imm.init_probs,
        imm.init_mean,
        imm.init_cov,
    )
    dj.RiskModel(risk.sigma_base, risk.crisis_amplifier)


def test_extreme_logits_stay_on_the_simplex():
    imm = dj.seed_imm()
    raw = dj.unconstrain(imm, lambda m: m.transition)
    big = eqx.tree_at(lambda r: r.transition.raw, raw, jnp.array([[800.0, -800.0]] * 3))
    Pi = np.asarray(dj.constrain(big, imm).transition)
    assert np.all(np.isfinite(Pi)) and np.all(Pi >= 0)
    np.testing.assert_allclose(Pi.sum(axis=1), 1.0, rtol=0, atol=1e-15)


def test_structural_zero_stays_zero_with_finite_gradients():
    Pi = [[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.2, 0.8]]
    imm = dj.IMMModel(
        (dj.OU(0.1, 0.3), dj.OU(0.02, 1.0), dj.OU(0.005, 5.0)), dj.Observation.scalar(1.0), Pi
    )
    raw = dj.unconstrain(imm, lambda m: m.transition)
    moved = eqx.tree_at(lambda r: r.transition.raw, raw, raw.transition.raw + 0.3)
    out = np.asarray(dj.constrain(moved, imm).transition)
    assert out[0, 2] == 0.0 and out[2, 0] == 0.0
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=0, atol=1e-15)

    zs = np.sin(np.arange(20.0))

    def loss(r):
        return dj.feature_nll(dj.constrain(r, imm), zs, 0.5)

    g = jax.grad(loss)(raw).transition.raw
    assert np.all(np.isfinite(g))
    assert g[0, 1] == 0.0 and g[2, 0] == 0.0  # the -inf logits (row 0: [p01, p02] -> p02)


def test_fixed_fields_are_the_same_arrays():
    model = dj.KalmanModel(dj.OU(0.0, 0.8), dj.Observation.scalar(1.3), 0.2, 0.7)
    raw = dj.unconstrain(model, lambda m: m.dynamics.sigma)
    moved = eqx.tree_at(lambda r: r.dynamics.sigma.raw, raw, jnp.log(2.5))
    out = dj.constrain(moved, model)
    assert out.dynamics.theta is model.dynamics.theta
    assert out.observation.cov_chol is model.observation.cov_chol
    assert out.init_mean is model.init_mean and out.init_cov is model.init_cov
    assert float(out.dynamics.theta) == 0.0
    np.testing.assert_allclose(out.dynamics.sigma, 2.5, rtol=1e-15)


def test_constrain_under_jit_vmap_and_grad():
    params = _params()
    raw = dj.unconstrain(params)
    flat, unravel = ravel_pytree(raw)
    batch = flat[None] + 0.1 * jnp.arange(3.0)[:, None]
    out = jax.jit(jax.vmap(lambda x: dj.constrain(unravel(x), params).model.transition))(batch)
    assert out.shape == (3, 3, 3)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=0, atol=1e-14)
    g = jax.grad(lambda x: jnp.sum(dj.constrain(unravel(x), params).model.init_cov))(flat)
    assert np.all(np.isfinite(g))


def test_trainable_forms_agree():
    params = _params()
    by_selector = dj.trainable_mask(params, lambda p: (p.model.dynamics, p.risk.sigma_base))
    n_true = sum(jax.tree.leaves(by_selector))
    assert n_true == 3 * 4 + 1
    by_tree = jax.tree.map(lambda _: False, params)
    by_tree = eqx.tree_at(lambda p: p.model.dynamics, by_tree, (_true_tree(params.model.dynamics)))
    by_tree = eqx.tree_at(lambda p: p.risk.sigma_base, by_tree, True)
    assert _leaves_equal(by_selector, by_tree)
    prefix = dj.trainable_mask(params, dj.FitParams(True, False))
    assert sum(jax.tree.leaves(prefix)) == len(jax.tree.leaves(params.model))
    assert sum(jax.tree.leaves(dj.trainable_mask(params))) == len(jax.tree.leaves(params))
    # The selected fields are exactly the ones unconstrain returns.
    raw = dj.unconstrain(params, by_selector)
    assert len(jax.tree.leaves(raw, is_leaf=lambda x: isinstance(x, dj.Unconstrained))) == 13


def _true_tree(tree):
    return jax.tree.map(lambda _: True, tree)


def test_trainable_zero_positive_field_is_an_error():
    model = dj.KalmanModel(dj.OU(0.0, 0.8), dj.Observation.scalar(1.3))
    with pytest.raises(
        ValueError, match=r"`theta` \(\.dynamics\.theta\) is trainable but equals 0.0"
    ):
        dj.unconstrain(model)
    with pytest.raises(ValueError, match="crisis_amplifier"):
        dj.unconstrain(dj.RiskModel(1.0, 0.0))


def test_bad_trainable_is_an_error():
    params = _params()
    with pytest.raises(ValueError, match="`trainable` must select fields"):
        dj.trainable_mask(params, lambda p: p.model.no_such_field)
    with pytest.raises(ValueError, match="`trainable` must be None, a selector"):
        dj.trainable_mask(params, (True, True, True))
