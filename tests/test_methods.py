"""Method objects (issue 10, item 2): how a filter runs and how it is differentiated.

For every method allowed on a model (``dj.Sequential`` with each adjoint, and
``dj.Associative`` for a ``KalmanModel``): the values and the reverse-mode gradients are
the same across methods, ``jax.jvp`` either equals the reverse-mode directional derivative
or raises a ``TypeError`` naming the method and what to use, invalid combinations raise a
``ValueError`` naming the method, and every function that runs a filter takes ``method=``.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj

T = 30
RNG = np.random.default_rng(11)
ZS = np.cumsum(RNG.normal(scale=0.5, size=(T, 2)), axis=0) + RNG.normal(size=(T, 2))
ZS[4, 1] = np.nan  # partly observed
ZS[9] = np.nan  # nothing observed
DTS = RNG.uniform(0.1, 0.8, size=T)
OBS = dj.Observation([1.0, 0.8], [[1.0, 0.3], [0.3, 2.0]])

FUSED = dj.Sequential(adjoint=dj.FusedAdjoint())
CHECKPOINT = dj.Sequential(adjoint=dj.CheckpointAdjoint())
DIRECT = dj.Sequential(adjoint=dj.DirectAdjoint())
ASSOCIATIVE = dj.Associative()
METHODS = {"fused": FUSED, "checkpoint": CHECKPOINT, "direct": DIRECT, "associative": ASSOCIATIVE}

# (model, dt): the scalar and the extended state, a Kalman model and an IMM (the scalar
# IMM runs the scalar cycle with the 2-feature reduction, the extended one the general
# cycle), regular and irregular steps.
MODELS = {
    "kalman-ou": (dj.KalmanModel(dj.OU(0.3, 0.9), OBS, 0.1, 1.5), 0.4),
    "kalman-accel": (
        dj.KalmanModel(dj.OUAccel(0.3, 0.9, 0.5, 0.4), OBS, 0.1, [[1.0, 0.1], [0.1, 0.3]]),
        DTS,
    ),
    "imm-scalar": (dj.seed_imm(OBS), DTS),
    "imm-extended": (dj.seed_imm(OBS, extended=True), 0.4),
}


def _allowed(name):
    # The associative scan is slow to compile (its gradient most): on the scalar Kalman
    # model only; tests/test_kalman_parallel.py compares its values on the others.
    names = ["fused", "checkpoint", "direct"]
    return names + ["associative"] if name == "kalman-ou" else names


def _loss(model, method, dt):
    # Several outputs enter, so every cotangent path of an adjoint is used.
    r = dj.filter(model, ZS, dt, method=method)
    return r.log_likelihood + 0.1 * jnp.sum(r.drift) + jnp.sum(r.drift_var), r


# Module-level compiled functions: one compilation per (model structure, method, dt shape).
_value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(_loss, has_aux=True))
_jvp = eqx.filter_jit(
    lambda model, tangent, method, dt: jax.jvp(
        lambda m: _loss(m, method, dt)[0], (model,), (tangent,)
    )[1]
)


def _direction(model):
    """A tangent for every parameter of the model (a smooth direction, not a constraint-
    preserving one: the filter does not check its inputs' constraints while traced)."""
    keys = iter(jax.random.split(jax.random.key(3), 64))
    return jax.tree.map(lambda x: 0.01 * jax.random.normal(next(keys), x.shape, x.dtype), model)


# Forward mode is compiled for every method on one Kalman model and one IMM (each jvp is
# a compilation of its own); the fused adjoint's error on all four.
FORWARD = ("kalman-ou", "imm-scalar")


@pytest.mark.parametrize("name", list(MODELS))
def test_methods_agree_in_values_gradients_and_forward_mode(name):
    """Values and reverse-mode gradients to 1e-10 across methods; ``jax.jvp`` equals the
    reverse-mode directional derivative, or (the fused adjoint) raises a ``TypeError``
    naming the method."""
    model, dt = MODELS[name]
    (_, ref), g_ref = _value_and_grad(model, DIRECT, dt)
    tangent = _direction(model)
    flat = lambda tree: jax.tree.leaves(tree)
    expected = sum(jnp.vdot(a, b) for a, b in zip(flat(g_ref), flat(tangent), strict=True))
    for method in (METHODS[k] for k in _allowed(name)):
        (_, res), g = _value_and_grad(model, method, dt)
        for field in ("log_likelihood", "drift", "drift_var", "regime_probs", "p_crisis"):
            np.testing.assert_allclose(
                getattr(res, field), getattr(ref, field), rtol=1e-10, atol=1e-10, err_msg=field
            )
        for a, b in zip(flat(g), flat(g_ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
        if method.resolve(model).forward_mode:
            if name in FORWARD:
                np.testing.assert_allclose(_jvp(model, tangent, method, dt), expected, rtol=1e-10)
        else:
            with pytest.raises(TypeError, match=r"dj\.Sequential\(adjoint=dj\.FusedAdjoint\(\)\)"):
                _jvp(model, tangent, method, dt)


def test_the_forward_mode_error_says_what_to_use():
    model = dj.KalmanModel(dj.OU(0.3, 0.9), dj.Observation.scalar(2.0))
    zs = ZS[:, 0]
    nll = lambda th, method=FUSED: dj.feature_nll(
        eqx.tree_at(lambda m: m.dynamics.theta, model, th), zs, 0.4, method=method
    )
    # The default method of a KalmanModel is the fused adjoint.
    assert dj.Sequential().resolve(model) == FUSED
    with pytest.raises(TypeError) as err:
        jax.jvp(nll, (0.3,), (1.0,))
    text = str(err.value)
    assert "jax.jvp" in text and "custom_vjp" in text and "dj.FusedAdjoint()" in text
    assert "dj.Sequential(adjoint=dj.DirectAdjoint())" in text
    assert "dj.Sequential(adjoint=dj.CheckpointAdjoint())" in text
    with pytest.raises(TypeError, match="FusedAdjoint"):
        jax.jacfwd(nll)(0.3)
    # Reverse over reverse goes through the fused adjoint, and so does jax.hessian.
    h_ref = jax.hessian(nll)(0.3, DIRECT)
    np.testing.assert_allclose(jax.jacrev(jax.grad(nll))(0.3, FUSED), h_ref, rtol=1e-10)
    np.testing.assert_allclose(jax.hessian(nll)(0.3, FUSED), h_ref, rtol=1e-10)


def test_default_adjoints():
    kalman, imm = MODELS["kalman-ou"][0], MODELS["imm-scalar"][0]
    assert dj.Sequential().resolve(kalman) == FUSED
    assert dj.Sequential().resolve(imm) == CHECKPOINT
    assert kalman.default_adjoint() == dj.FusedAdjoint()
    assert imm.default_adjoint() == dj.CheckpointAdjoint()
    # Forward mode is known once the adjoint is: the default's depends on the model.
    assert not dj.Sequential().forward_mode
    assert not dj.Sequential().resolve(kalman).forward_mode
    assert dj.Sequential().resolve(imm).forward_mode and ASSOCIATIVE.forward_mode
    assert all(m.second_order for m in METHODS.values())


def test_associative_on_an_imm_is_a_clear_error():
    imm, dt = MODELS["imm-scalar"]
    for method in (ASSOCIATIVE, "parallel"):
        with pytest.raises(ValueError, match=r"dj\.Associative\(\).*dj\.KalmanModel only"):
            dj.filter(imm, ZS, dt, method=method)
    with pytest.raises(ValueError, match=r"dj\.Associative\(\)"):
        dj.feature_nll(imm, ZS, dt, method=ASSOCIATIVE)


def test_bad_method_objects():
    model, dt = MODELS["kalman-ou"]
    # A ValueError naming `adjoint`; under the suite's runtime type checking
    # (--jaxtyping-packages) the annotation catches it first, as a TypeError naming it.
    with pytest.raises((ValueError, TypeError), match="adjoint"):
        dj.Sequential(adjoint="fused")
    with pytest.raises((ValueError, TypeError), match="method"):
        dj.filter(model, ZS, dt, method=dj.FusedAdjoint())
    from drift_jax._filters.methods import resolve_method

    with pytest.raises(ValueError, match=r"`method` must be a method object"):
        resolve_method(dj.FusedAdjoint(), model)
    with pytest.raises(
        ValueError, match=r"`method` must be 'sequential', 'parallel' or 'chunked'"
    ):
        dj.filter(model, ZS, dt, method="fused")
    # The legacy keyword and an explicit adjoint both set the adjoint: ambiguous.
    with pytest.raises(ValueError, match=r"`checkpoint=False` and `method=dj\.Sequential"):
        dj.filter(model, ZS, dt, method=FUSED, checkpoint=False)


def test_string_and_checkpoint_shorthands():
    from drift_jax._filters.methods import resolve_method

    kalman, imm = MODELS["kalman-ou"][0], MODELS["imm-scalar"][0]
    assert resolve_method("sequential", kalman) == FUSED
    assert resolve_method("sequential", imm) == CHECKPOINT
    assert resolve_method("parallel", kalman) == ASSOCIATIVE
    # checkpoint=True is the model's default adjoint, False the plain scan.
    assert resolve_method("sequential", kalman, checkpoint=True) == FUSED
    assert resolve_method(dj.Sequential(), imm, checkpoint=True) == CHECKPOINT
    assert resolve_method("sequential", kalman, checkpoint=False) == DIRECT
    assert resolve_method("sequential", imm, checkpoint=False) == DIRECT
    # The associative scan stores everything: `checkpoint` has nothing to set there.
    assert resolve_method("parallel", kalman, checkpoint=True) == ASSOCIATIVE
    # The shorthand runs the same compiled function as the object it stands for: exact.
    dt = MODELS["kalman-ou"][1]
    a = dj.filter(kalman, ZS, dt, method="parallel", checkpoint=False)
    assert float(a.log_likelihood) == float(
        dj.filter(kalman, ZS, dt, method=ASSOCIATIVE).log_likelihood
    )


def test_method_objects_are_hashable_static_values():
    assert dj.Sequential() == dj.Sequential(adjoint=None) == dj.Sequential(None)
    assert FUSED == dj.Sequential(dj.FusedAdjoint()) and FUSED != CHECKPOINT
    assert FUSED != ASSOCIATIVE and dj.Associative() == ASSOCIATIVE
    assert len({FUSED, dj.Sequential(dj.FusedAdjoint()), CHECKPOINT, DIRECT, ASSOCIATIVE}) == 4
    assert jax.tree.leaves(FUSED) == [] and jax.tree.leaves(ASSOCIATIVE) == []
    # Static under jit: one compiled function per method.
    model, dt = MODELS["kalman-ou"]
    run = jax.jit(
        lambda m, method: dj.filter(m, ZS, dt, method=method).log_likelihood,
        static_argnums=1,
    )
    np.testing.assert_allclose(run(model, DIRECT), run(model, ASSOCIATIVE), rtol=1e-10)
    with pytest.raises(TypeError):
        dj.AbstractAdjoint()
    with pytest.raises(TypeError):
        dj.AbstractFilterMethod()


# --- every function that runs a filter takes `method=` -------------------------------------


def test_losses_take_a_method():
    model, dt = MODELS["kalman-accel"]
    returns = RNG.normal(size=T)
    risk = dj.RiskModel(1.5, 1.0)
    for method in (DIRECT, ASSOCIATIVE, "parallel"):
        np.testing.assert_allclose(
            dj.feature_nll(model, ZS, dt, method=method), dj.feature_nll(model, ZS, dt), rtol=1e-10
        )
        np.testing.assert_allclose(
            dj.return_nll(model, risk, ZS, dt, returns, method=method),
            dj.return_nll(model, risk, ZS, dt, returns),
            rtol=1e-10,
        )
        np.testing.assert_allclose(
            dj.fit_loss(model, ZS, dt, returns=returns, risk=risk, method=method),
            dj.fit_loss(model, ZS, dt, returns=returns, risk=risk),
            rtol=1e-10,
        )
    # Forward mode through a loss: the plain scan has it, the fused adjoint names itself.
    _, t = jax.jvp(
        lambda m: dj.feature_nll(m, ZS, dt, method=DIRECT), (model,), (_direction(model),)
    )
    assert np.isfinite(t)
    with pytest.raises(TypeError, match="FusedAdjoint"):
        jax.jvp(lambda m: dj.fit_loss(m, ZS, dt), (model,), (_direction(model),))


def test_fit_and_fit_batch_take_a_method():
    start = dj.KalmanModel(dj.OU(0.5, 1.0), dj.Observation.scalar(2.0))
    zs = ZS[:, 0]
    kw = dict(steps=3, steps_per_call=3, progress=False, rtol=0.0)
    a = dj.fit(start, zs, 0.4, **kw)  # the fused adjoint
    b = dj.fit_batch(start, np.stack([zs, zs[::-1]]), 0.4, method=ASSOCIATIVE, **kw)
    np.testing.assert_allclose(b.loss_history[0], a.loss_history, rtol=1e-10)
    np.testing.assert_allclose(b.model.dynamics.sigma[0], a.model.dynamics.sigma, rtol=1e-10)
    with pytest.raises(ValueError, match=r"dj\.Associative\(\)"):
        dj.fit(dj.seed_imm(), zs, 0.4, method=ASSOCIATIVE, **kw)


class _NoSecondOrder(dj.AbstractFilterMethod):
    """A method without reverse-over-reverse (none of drift_jax's is), for the check."""

    def resolve(self, model):
        return self

    def run(self, model, zs, dt):
        return DIRECT.run(model, zs, dt)

    @property
    def forward_mode(self):
        return True

    @property
    def second_order(self):
        return False


def test_standard_errors_take_a_method_with_second_derivatives():
    model = dj.KalmanModel(dj.OU(0.5, 1.0), dj.Observation.scalar(2.0))
    zs = ZS[:, 0]
    ref = dj.standard_errors(model, zs, 0.4)  # the fused adjoint, reverse over reverse
    se = dj.standard_errors(model, zs, 0.4, method=DIRECT)
    np.testing.assert_allclose(se.hessian, ref.hessian, rtol=1e-9)
    with pytest.raises(ValueError, match=r"reverse over reverse.*dj\._NoSecondOrder\(\)"):
        dj.standard_errors(model, zs, 0.4, method=_NoSecondOrder())


def test_monte_carlo_takes_a_method():
    imm = dj.seed_imm(dj.Observation.scalar(4.0))
    single = dj.KalmanModel(dj.OU(0.02, 1.0), dj.Observation.scalar(4.0))
    paths = dj.simulate(imm, jax.random.key(0), n_paths=4, n_steps=40, dt=0.5)
    default = dj.monte_carlo({"ou": single}, paths)
    assert default.info["method"] == "dj.Sequential(adjoint=dj.DirectAdjoint())"
    par = dj.monte_carlo({"ou": single}, paths, method=ASSOCIATIVE)
    np.testing.assert_allclose(
        par.table.to_numpy(float), default.table.to_numpy(float), rtol=1e-9, equal_nan=True
    )
    with pytest.raises(ValueError, match=r"`estimators\['imm'\]`.*dj\.Associative\(\)"):
        dj.monte_carlo({"imm": imm}, paths, method=ASSOCIATIVE)
