"""How a filter runs and how it is differentiated: method objects, as diffrax's adjoints.

A *method* says how the filter goes over time:

- ``dj.Sequential(adjoint=...)``: one ``lax.scan`` over the steps (any model). Its
  *adjoint* says how reverse mode goes back through the scan:

  - ``dj.FusedAdjoint()``: the hand-written reverse pass of ``_filters/adjoint.py``. The forward
    stores only each step's carry, and the backward is one fused kernel per step (about
    2x the forward on CPU instead of ~40x). Reverse mode and reverse-over-reverse work;
    forward mode (``jax.jvp``, ``jax.jacfwd``) does not (it is a ``jax.custom_vjp``).
  - ``dj.CheckpointAdjoint()``: ``jax.checkpoint`` of the step: memory linear in ``T``
    (the carry per step), the step recomputed in the backward pass. Every mode works.
  - ``dj.DirectAdjoint()``: JAX's own derivative of the plain scan, every intermediate
    stored (memory ~ ``T`` x the step's intermediates). Every mode works.
  - ``None`` (the default): the model's own choice, ``model.default_adjoint()``:
    ``FusedAdjoint`` for a ``dj.KalmanModel``, ``CheckpointAdjoint`` for a ``dj.IMMModel``.

- ``dj.Associative()``: the parallel-in-time filter, an associative scan of ``O(log T)``
  depth (Särkkä & García-Fernández 2021, IEEE TAC 66(1)); ``dj.KalmanModel`` only. For one
  long series on an accelerator. Every differentiation mode works (all stored).

The forward values of every ``Sequential`` adjoint are the same computation; the
``Associative`` filter equals them to rounding (~1e-12 in float64).

The strings ``"sequential"`` and ``"parallel"`` are shorthands for ``dj.Sequential()`` and
``dj.Associative()``, and ``dj.filter``'s ``checkpoint=`` keyword for the adjoint
(``True``: the model's default, ``False``: ``dj.DirectAdjoint()``).

Method objects are ``eqx.Module``s with static fields only: hashable, compared by value,
and static under ``jit`` (a compiled function is specialised on the method).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax

from .._core import validate as v

__all__ = [
    "AbstractAdjoint",
    "AbstractFilterMethod",
    "Associative",
    "CheckpointAdjoint",
    "Chunked",
    "DirectAdjoint",
    "FusedAdjoint",
    "Sequential",
    "method_name",
    "resolve_method",
]


class AbstractAdjoint(eqx.Module):
    """How reverse mode goes back through a sequential filter's scan (abstract).

    A concrete adjoint implements ``scan(step, params, init, xs)``, which has the semantics
    of ``lax.scan(lambda c, x: step(params, c, x), init, xs)``. ``params`` are every array
    the step reads that is not per step (parameters, transition matrices): they must be
    passed explicitly, not closed over, since a hand-written adjoint differentiates only its
    explicit inputs. ``forward_mode`` says whether ``jax.jvp`` / ``jax.jacfwd`` go through.
    """

    forward_mode: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def scan(self, step: Callable, params, init, xs):
        """``lax.scan`` of ``step(params, carry, x) -> (carry, y)``: ``(final carry, ys)``."""


class FusedAdjoint(AbstractAdjoint):
    """The hand-written reverse pass of a filter scan (``drift_jax/_filters/adjoint.py``).

    The forward pass stores each step's incoming carry; the backward pass is a reverse
    scan of ``jax.vjp`` of the step whose carry is one flat vector, so XLA fuses it into one
    kernel per step: about 2x the forward, where JAX's own derivative of the scan costs
    ~40x on CPU. The derivatives equal JAX's own (to rounding). Reverse mode and
    reverse-over-reverse (``jax.jacrev(jax.grad(f))``) work; forward mode does not: it is a
    ``jax.custom_vjp``, and ``jax.jvp`` / ``jax.jacfwd`` of it raise a ``TypeError`` naming
    this adjoint (use ``dj.DirectAdjoint()`` or ``dj.CheckpointAdjoint()`` for them).

    Example:
        >>> import jax, drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(1.0))
        >>> method = dj.Sequential(adjoint=dj.FusedAdjoint())
        >>> g = jax.grad(lambda m: dj.filter(m, [0.3, -0.1, 0.8], 0.5, method=method)
        ...              .log_likelihood)(model)
        >>> g.dynamics.theta.shape
        ()
    """

    forward_mode: ClassVar[bool] = False

    def scan(self, step, params, init, xs):
        from .adjoint import scan_with_adjoint

        return scan_with_adjoint(step, params, init, xs)


class CheckpointAdjoint(AbstractAdjoint):
    """``jax.checkpoint`` of the filter's step: reverse mode stores only the carry per step.

    The backward pass recomputes each step from its stored carry (memory linear in ``T``,
    about one extra forward step of work per step). Forward mode works too.

    Example:
        >>> import drift_jax as dj
        >>> method = dj.Sequential(adjoint=dj.CheckpointAdjoint())
        >>> res = dj.filter(dj.seed_imm(), [0.3, -0.1, 0.8], 0.5, method=method)
        >>> res.regime_probs.shape
        (3, 3)
    """

    forward_mode: ClassVar[bool] = True

    def scan(self, step, params, init, xs):
        body = jax.checkpoint(lambda c, x: step(params, c, x), prevent_cse=False)
        return jax.lax.scan(body, init, xs)


class DirectAdjoint(AbstractAdjoint):
    """JAX's own derivative of the plain scan: every intermediate of every step is stored.

    The fastest forward pass with nothing to differentiate, and the one that supports
    every mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``); reverse mode needs memory of
    ``T`` times the step's intermediates and is slow on CPU for the Kalman filter (~40x the
    forward, see ``dj.FusedAdjoint``).

    Example:
        >>> import jax, drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(1.0))
        >>> method = dj.Sequential(adjoint=dj.DirectAdjoint())
        >>> f = lambda th: dj.filter(
        ...     dj.KalmanModel(dj.OU(th, 0.5), dj.Observation.scalar(1.0)), [0.3, 0.8], 0.5,
        ...     method=method).log_likelihood
        >>> _, tangent = jax.jvp(f, (0.1,), (1.0,))  # forward mode goes through
        >>> tangent.shape
        ()
    """

    forward_mode: ClassVar[bool] = True

    def scan(self, step, params, init, xs):
        return jax.lax.scan(lambda c, x: step(params, c, x), init, xs)


class AbstractFilterMethod(eqx.Module):
    """How a filter goes over time (abstract): ``dj.Sequential`` or ``dj.Associative``.

    A concrete method implements ``resolve(model)`` (the method with every setting fixed for
    that model, or a ``ValueError`` naming the method when the model does not support it),
    ``run(model, zs, dt)`` (the filter on checked inputs, inside ``jit``), ``forward_mode``
    (whether ``jax.jvp`` goes through, once resolved) and ``second_order`` (whether
    reverse-over-reverse does, as ``dj.standard_errors`` needs).
    """

    @abc.abstractmethod
    def resolve(self, model) -> AbstractFilterMethod:
        """This method with its settings fixed for ``model`` (checks it is supported)."""

    @abc.abstractmethod
    def run(self, model, zs, dt):
        """The filter of ``model`` on checked ``zs`` ``[T, m]`` and ``dt`` (scalar or ``[T]``)."""

    @property
    @abc.abstractmethod
    def forward_mode(self) -> bool:
        """Whether forward-mode differentiation goes through (after ``resolve``)."""

    @property
    @abc.abstractmethod
    def second_order(self) -> bool:
        """Whether reverse-over-reverse differentiation goes through (after ``resolve``)."""


class Sequential(AbstractFilterMethod):
    """The sequential filter: one ``lax.scan`` over the steps (any model).

    Arguments:
        adjoint: how reverse mode goes back through the scan: ``dj.FusedAdjoint()`` (the
            hand-written fused reverse pass; no forward mode), ``dj.CheckpointAdjoint()``
            (``jax.checkpoint`` of the step) or ``dj.DirectAdjoint()`` (everything stored;
            forward mode works). ``None`` (default): the model's own,
            ``model.default_adjoint()`` (``FusedAdjoint`` for a ``dj.KalmanModel``,
            ``CheckpointAdjoint`` for a ``dj.IMMModel``).

    Example:
        >>> import jax, drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(1.0))
        >>> zs = [0.3, -0.1, 0.8]
        >>> a = dj.filter(model, zs, 0.5, method=dj.Sequential())
        >>> b = dj.filter(model, zs, 0.5, method=dj.Sequential(adjoint=dj.DirectAdjoint()))
        >>> bool(a.log_likelihood == b.log_likelihood)
        True
        >>> dj.Sequential() == dj.Sequential(adjoint=None), hash(dj.Sequential()) is not None
        (True, True)
    """

    adjoint: AbstractAdjoint | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.adjoint is not None and not isinstance(self.adjoint, AbstractAdjoint):
            raise v.ArgumentTypeError(
                "`adjoint` must be None (the model's default), dj.FusedAdjoint(), "
                f"dj.CheckpointAdjoint() or dj.DirectAdjoint(), got {self.adjoint!r}."
            )

    def resolve(self, model) -> Sequential:
        adjoint = model.default_adjoint() if self.adjoint is None else self.adjoint
        return Sequential(adjoint)

    def run(self, model, zs, dt):
        return model.sequential_filter(zs, dt, self.resolve(model).adjoint)

    @property
    def forward_mode(self) -> bool:
        return self.adjoint is not None and self.adjoint.forward_mode

    @property
    def second_order(self) -> bool:
        return True  # every adjoint here is differentiable in reverse mode again


class Associative(AbstractFilterMethod):
    """The parallel-in-time filter: an associative scan, ``O(log T)`` depth.

    Särkkä & García-Fernández (2021), "Temporal parallelization of Bayesian smoothers",
    IEEE TAC 66(1): each step is an element of an associative operation, combined by
    ``lax.associative_scan``. For one long series on an accelerator (on CPU the
    sequential scan is faster). ``dj.KalmanModel`` only: an IMM's mixing is not an
    associative linear-Gaussian operation, and asking for it raises a ``ValueError``.
    ``update="independent"`` is scanned as the joint update with ``diag(R)`` (the same
    filter). Every differentiation mode works (JAX's own derivative, all stored).

    Example:
        >>> import drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(1.0))
        >>> zs = [0.3, -0.1, 0.8]
        >>> a = dj.filter(model, zs, 0.5, method=dj.Associative())
        >>> b = dj.filter(model, zs, 0.5, method=dj.Sequential())
        >>> bool(abs(a.log_likelihood - b.log_likelihood) < 1e-6)
        True
    """

    def resolve(self, model) -> Associative:
        if not model.supports_associative_scan:
            raise ValueError(
                f"method=dj.Associative() (method='parallel') is available for "
                f"dj.KalmanModel only, not for a {type(model).__name__}; the IMM's mixing "
                "is not an associative linear-Gaussian operation. Use dj.Sequential() "
                "(method='sequential')."
            )
        return self

    def run(self, model, zs, dt):
        return model.associative_filter(zs, dt)

    @property
    def forward_mode(self) -> bool:
        return True

    @property
    def second_order(self) -> bool:
        return True


class Chunked(AbstractFilterMethod):
    """Parallel-in-time filtering of one long series: chunks filtered side by side, in
    sweeps until the chunks' starting states are checked to have converged
    (``_filters/chunked.py``). Any model (IMM of every shape, Kalman), missing data and
    irregular ``dt``.

    The series is cut into chunks of ``chunk_size`` steps, all filtered at once
    (``vmap``); each sweep starts every chunk from the state the chunk before it ended in
    during the last sweep, until re-running the first ``check_steps`` steps of every chunk
    from its new start changes no state component by more than ``tol`` (relative to
    ``max(1, |value|)``). A filter forgets its start, so this typically takes 1-2 sweeps;
    chunk ``c``'s start is exact after ``c`` sweeps, so after at most ``num_chunks``
    sweeps the result is exact whatever the model: never a wrong answer, at worst the
    sequential one's cost. ``result.chunked`` (a ``ChunkedInfo``) reports the sweeps used
    and the last change. Gradients are exact: an adjoint sweeps backwards over the chunk
    boundaries the same way until the boundary cotangents converge (to ``tol``).

    Reverse mode only: forward mode and reverse-over-reverse raise a clear error
    (``dj.standard_errors`` uses the sequential filter's derivatives of the same
    likelihood).

    Arguments:
        chunk_size: steps per chunk ``L`` (``None``: 256, or ``ceil(T / 2)`` when that is
            less). Shorter chunks: more parallel width, more sweeps when the filter
            forgets slowly.
        check_steps: steps re-run at the start of each chunk to check convergence
            (default 32, at most ``chunk_size``).
        tol: the convergence tolerance (``None``: 100 ulps of the model's dtype,
            ``2.2e-14`` in float64, ``1.2e-5`` in float32).
        max_sweeps: a cap on the forward sweeps (``None``: ``num_chunks``, which is always
            exact). A smaller cap can stop before convergence: check
            ``result.chunked.boundary_change``.
        adjoint: the reverse pass inside each chunk (``None``: the model's default).

    Example:
        >>> import jax.numpy as jnp, drift_jax as dj
        >>> model = dj.seed_imm()
        >>> zs = jnp.sin(jnp.arange(1000) / 50.0)
        >>> a = dj.filter(model, zs, 0.5, method=dj.Chunked(chunk_size=100))
        >>> b = dj.filter(model, zs, 0.5, method=dj.Sequential())
        >>> bool(jnp.max(jnp.abs(a.drift - b.drift)) < 1e-10), a.chunked.num_chunks
        (True, 10)
    """

    chunk_size: int | None = eqx.field(static=True, default=None)
    check_steps: int = eqx.field(static=True, default=32)
    tol: float | None = eqx.field(static=True, default=None)
    max_sweeps: int | None = eqx.field(static=True, default=None)
    adjoint: AbstractAdjoint | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.chunk_size is not None:
            v.positive_int("chunk_size", self.chunk_size, "None or an integer")
        v.positive_int("check_steps", self.check_steps, "an integer")
        if self.max_sweeps is not None:
            v.positive_int("max_sweeps", self.max_sweeps, "None or an integer")
        if self.tol is not None:
            v.nonnegative_float("tol", self.tol)
        if self.adjoint is not None and not isinstance(self.adjoint, AbstractAdjoint):
            raise v.ArgumentTypeError(
                "`adjoint` must be None (the model's default), dj.FusedAdjoint(), "
                f"dj.CheckpointAdjoint() or dj.DirectAdjoint(), got {self.adjoint!r}."
            )

    def tolerance(self, dtype) -> float:
        """``tol``, or 100 ulps of ``dtype`` when it is ``None``."""
        import numpy as np

        return float(100 * np.finfo(dtype).eps) if self.tol is None else float(self.tol)

    def resolve(self, model) -> Chunked:
        adjoint = model.default_adjoint() if self.adjoint is None else self.adjoint
        return Chunked(self.chunk_size, self.check_steps, self.tol, self.max_sweeps, adjoint)

    def run(self, model, zs, dt):
        from .chunked import chunked_filter

        return chunked_filter(model, zs, dt, self.resolve(model))

    @property
    def forward_mode(self) -> bool:
        return False

    @property
    def second_order(self) -> bool:
        return False


_STRINGS = {"sequential": Sequential, "parallel": Associative, "chunked": Chunked}

#: ``dj.Sequential()``, with the model's default adjoint: what ``method=None`` runs on a
#: short series (and where nothing is differentiated in reverse mode, e.g. Monte Carlo).
SEQUENTIAL = Sequential()

#: ``method=None`` runs ``dj.Chunked()`` on a series of at least this many steps (where it
#: is many times faster than the sequential scan, forward and reverse; see
#: benchmarks/RESULTS.md), ``dj.Sequential()`` on a shorter one.
AUTO_CHUNKED_STEPS = 10_000


def auto_method(num_steps: int | None) -> AbstractFilterMethod:
    """What ``method=None`` means for a series of ``num_steps`` steps (``None``: unknown,
    the sequential filter)."""
    if num_steps is not None and num_steps >= AUTO_CHUNKED_STEPS:
        return Chunked()
    return SEQUENTIAL


def resolve_method(
    method, model, checkpoint: bool | None = None, num_steps: int | None = None
) -> AbstractFilterMethod:
    """A method object with its settings fixed for ``model``, from a method object, a
    string shorthand (``"sequential"``, ``"parallel"``, ``"chunked"``), ``None`` (picked by
    the series' length ``num_steps``: ``auto_method``) and ``dj.filter``'s legacy
    ``checkpoint`` keyword (``None``: not given; given, it sets a sequential method)."""
    if method is None:
        method = SEQUENTIAL if checkpoint is not None else auto_method(num_steps)
    if isinstance(method, str):
        if method not in _STRINGS:
            raise ValueError(
                f"`method` must be 'sequential', 'parallel' or 'chunked', got {method!r}; or "
                "a method object: dj.Sequential(adjoint=...), dj.Associative() or "
                "dj.Chunked(...); or None (picked by the series' length)."
            )
        method = _STRINGS[method]()
    elif not isinstance(method, AbstractFilterMethod):
        raise v.ArgumentTypeError(
            "`method` must be a method object, dj.Sequential(adjoint=...), dj.Associative() "
            "or dj.Chunked(...), one of the strings 'sequential', 'parallel', 'chunked', or "
            f"None (picked by the series' length); got {method!r}."
        )
    if checkpoint is not None:
        v.boolean("checkpoint", checkpoint, "True, False or None")
        if isinstance(method, Sequential):
            if method.adjoint is not None:
                raise ValueError(
                    f"`checkpoint={checkpoint}` and `method={method_name(method)}` both set "
                    "the adjoint; pass only the method object."
                )
            # The old keyword: True is the model's default reverse pass (the fused adjoint
            # for a KalmanModel, jax.checkpoint for an IMM), False the plain scan.
            method = Sequential(None if checkpoint else DirectAdjoint())
        # The associative scan stores everything: `checkpoint` has nothing to set there.
    return method.resolve(model)


def method_name(method) -> str:
    """``dj.Sequential(adjoint=dj.FusedAdjoint())``: a method as code, for messages."""
    if isinstance(method, Sequential | Chunked):
        adjoint = "None" if method.adjoint is None else f"dj.{type(method.adjoint).__name__}()"
        return f"dj.{type(method).__name__}(adjoint={adjoint})"
    return f"dj.{type(method).__name__}()"


def forward_mode_error(method) -> TypeError:
    """The error for ``jax.jvp`` / ``jax.jacfwd`` through a method that has no forward mode."""
    name = method_name(method)
    chunked = isinstance(method, Chunked)
    how = (
        "the chunked filter's adjoint (backward sweeps over the chunk boundaries)"
        if chunked
        else "the hand-written fused adjoint"
    )
    works = "reverse mode works" if chunked else "reverse mode and reverse-over-reverse work"
    return TypeError(
        f"Forward-mode differentiation (jax.jvp, jax.jacfwd) does not go through the filter "
        f"with method={name}: its reverse pass is {how}, a "
        "jax.custom_vjp, which has no forward mode. Pass "
        "method=dj.Sequential(adjoint=dj.DirectAdjoint()) (JAX's own derivatives, every "
        "intermediate stored) or dj.Sequential(adjoint=dj.CheckpointAdjoint()) "
        f"(jax.checkpoint) for forward mode; {works} with {name}."
    )
