"""Model config files (TOML): a whole model, saved here and read by the production filter.

Schema version 1 (``README.md``, "Config files", shows a file)::

    schema_version = 1
    kind = "imm"              # or "kalman"
    dtype = "float64"         # or "float32": every parameter's precision
    crisis_regime = "Crisis"  # imm: a regime name or index
    transition = [[...], ...] # imm: Pi[i, j] = P(next = j | now = i), per cycle; or
    rates = [[...], ...]      # imm: a generator Q (per second), Pi = expm(Q dt) per step
    init_probs = [...]        # imm
    init_mean = [...]         # [n]
    init_cov = [[...], ...]   # [n, n]
    [[regimes]]               # one per regime (exactly one for "kalman")
    name, dynamics ("OU" | "OUAccel"), theta, sigma, theta_accel, sigma_accel (OUAccel),
    discretisation ("euler" | "exact")
    [observation]             # update, feature_names, loadings [m], cov [m, m] (L L^T
                              # computed exactly and rounded once to float64, for people
                              # and the production reader), cov_cholesky [m, m] (the
                              # factor L the model holds: reloads bit-exactly)
    [observation.robust]      # optional: kind ("huber" | "student_t") and its parameter
                              # (threshold | df); no table: Gaussian noise
    [risk]                    # sigma_base, crisis_amplifier, threshold (optional table)
    [metadata]                # free table (created, fitted_by, ...)

Floats are written with Python's ``repr`` of the exact value in the model's dtype (a
float32 value goes through ``float(np.float32(x))``), so save -> load is bit-exact, and
every number written is specified to the bit (README, "Reproducibility"): the model's own
values, and ``cov`` from ``_exact_arithmetic.gram``, never from a BLAS product. A file
written by hand may leave out ``dtype`` (float64), ``discretisation`` ("euler"),
``update`` ("joint"), ``name``, ``init_*``, ``crisis_regime``, ``threshold`` (0.3), and
one of ``cov`` / ``cov_cholesky``; unknown keys are errors (except under ``[metadata]``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np

from .._core import exact_arithmetic as xa, validate as v
from .._core.validate import DataWarning
from .._filters.imm import IMMModel
from .._filters.kalman import KalmanModel
from .._models.constraints import constrained_fields, field_constraint
from .._models.dynamics import OU, OUAccel
from .._models.model import AbstractDriftModel, check_model
from .._models.observation import Observation
from .._models.risk import RiskModel
from .._models.robust import ROBUST_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "DriftConfig", "config_from_toml", "config_to_toml"]
__all__ += ["load_config", "save_config"]

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
_DTYPES = ("float32", "float64")
#: The model kinds (``model.kind``) schema 1 holds.
_KINDS = ("kalman", "imm")
_COV_RTOL = 1e-9


class ConfigError(ValueError):
    """A config file or text that is not a valid drift_jax model config."""


@dataclasses.dataclass(frozen=True, eq=False)
class DriftConfig:
    """What a config file holds.

    Attributes:
        model: the ``dj.KalmanModel`` or ``dj.IMMModel``.
        risk: the ``dj.RiskModel``, or None when the file has no ``[risk]`` table.
        feature_names: the features' names in order, or None.
        metadata: the free ``[metadata]`` table (empty when absent).
    """

    model: AbstractDriftModel
    risk: RiskModel | None = None
    feature_names: tuple[str, ...] | None = None
    metadata: dict = dataclasses.field(default_factory=dict)


def save_config(path, model, risk=None, *, feature_names=None, metadata=None) -> Path:
    """Write ``model`` (and ``risk``) to a TOML config file (UTF-8).

    Arguments:
        path: the file to write (replaced if it exists).
        model, risk, feature_names, metadata: as for ``config_to_toml``.

    Returns:
        The path written, as a ``pathlib.Path`` (the example of ``load_config`` uses it).
    """
    text = config_to_toml(model, risk, feature_names=feature_names, metadata=metadata)
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def load_config(path, *, normalise: bool | float = False) -> DriftConfig:
    """Read a TOML config file written by ``save_config`` (or by hand, or by production).

    A ``dtype = "float64"`` file loads in float64 only with JAX's x64 mode on
    (``jax.config.update("jax_enable_x64", True)``); otherwise JAX gives float32, and a
    ``dj.DataWarning`` says so (the parameters are rounded to float32).

    Arguments:
        path: the file.
        normalise: ``False`` (default): ``transition`` rows and ``init_probs`` must sum to
            1 within the model's tolerance (1e-9 in float64, 1e-5 in float32). ``True`` (or
            a tolerance, a float; ``True`` is 1e-6): hand-rounded rows that sum to 1 within
            it are divided by their exact sum (each entry rounded once), with a
            ``dj.DataWarning`` naming the rows; a row further off is still an error.

    Raises:
        ConfigError: (a ``ValueError``) naming the file and the key path of what is wrong.

    Example:
        >>> import tempfile, pathlib, drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.02, 1.0), dj.Observation([1.0, 0.5], [4.0, 9.0]))
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "drift.toml"
        >>> cfg = dj.load_config(dj.save_config(path, model, dj.RiskModel(10.0, 2.0)))
        >>> bool(cfg.model.dynamics.theta == model.dynamics.theta), float(cfg.risk.sigma_base)
        (True, 10.0)
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    return config_from_toml(text, source=str(path), normalise=normalise)


def config_to_toml(model, risk=None, *, feature_names=None, metadata=None) -> str:
    """A whole model as TOML text (schema version 1, module docstring).

    Arguments:
        model: a ``dj.KalmanModel`` or ``dj.IMMModel`` (its dtype, float32 or float64, is
            the file's; a parameter in another precision is cast to it).
        risk: an optional ``dj.RiskModel`` (written as ``[risk]``).
        feature_names: optional names of the ``m`` features (default: the model's
            ``observation.feature_names``; names that differ from the model's are an
            error). A config read back gives its model these names.
        metadata: optional free table (string keys; TOML values: strings, numbers,
            booleans, datetimes, lists, tables).

    Example:
        >>> import drift_jax as dj
        >>> text = dj.config_to_toml(dj.seed_imm(dj.Observation.scalar(4.0)))
        >>> text.splitlines()[2:4]
        ['schema_version = 1', 'kind = "imm"']
    """
    check_model(model)
    kind, members = model.kind, model.regime_dynamics
    if kind not in _KINDS:
        raise ValueError(
            f"config schema {SCHEMA_VERSION} holds the model kinds {list(_KINDS)}; a "
            f"{type(model).__name__} (kind {kind!r}) cannot be written to a config file."
        )
    dtype = np.dtype(model.dtype)
    if dtype.name not in _DTYPES:
        raise ValueError(f"the model's dtype must be one of {_DTYPES}, got {dtype.name}.")
    if risk is not None and not isinstance(risk, RiskModel):
        raise ValueError(f"`risk` must be a dj.RiskModel or None, got {type(risk).__name__}.")
    m = model.observation.num_features
    own = model.observation.feature_names
    names = own if feature_names is None else _feature_names(feature_names, m)
    if own is not None and names != own:
        raise ValueError(
            f"`feature_names` {list(names)} differ from the model's observation.feature_names "
            f"{list(own)}; leave `feature_names` out (the model's are written), or rename the "
            "model's (observation.with_feature_names)."
        )

    def arr(x) -> np.ndarray:
        return np.asarray(x).astype(dtype)

    lines = [
        f"# drift_jax model config, schema {SCHEMA_VERSION}.",
        "# cov = cov_cholesky @ cov_cholesky.T (exact, rounded to float64); the model holds "
        "cov_cholesky.",
        f"schema_version = {SCHEMA_VERSION}",
        f'kind = "{kind}"',
        f'dtype = "{dtype.name}"',
    ]
    if kind == "imm":
        crisis = model.regime_names[model.crisis_index]
        unique = model.regime_names.count(crisis) == 1
        lines.append(f"crisis_regime = {_lit(crisis) if unique else model.crisis_index}")
        if model.transition_depends_on_dt:  # continuous-time regimes: the generator
            lines.append(f"rates = {_matrix(arr(model.rates))}")
        else:
            lines.append(f"transition = {_matrix(arr(model.transition))}")
        lines.append(f"init_probs = {_vector(arr(model.init_probs))}")
    lines.append(f"init_mean = {_vector(arr(model.init_mean))}")
    lines.append(f"init_cov = {_matrix(arr(model.init_cov))}")
    for k, d in enumerate(members):
        lines += ["", "[[regimes]]"]
        if kind == "imm":
            lines.append(f"name = {_lit(model.regime_names[k])}")
        lines.append(f'dynamics = "{type(d).__name__}"')
        # the parameters are the fields that declare a constraint, in declaration order
        lines += [f"{f} = {_float(arr(getattr(d, f)))}" for f, _ in constrained_fields(d)]
        lines.append(f'discretisation = "{d.discretisation}"')
    obs = model.observation
    L = arr(obs.cov_chol)
    cov = xa.gram(L.astype(np.float64))  # exact, rounded once: the same text on every machine
    lines += ["", "[observation]", f'update = "{obs.update}"']
    if names is not None:
        lines.append(f"feature_names = [{', '.join(_lit(s) for s in names)}]")
    lines.append(f"loadings = {_vector(arr(obs.loadings))}")
    lines.append(f"cov = {_matrix(cov)}")
    lines.append(f"cov_cholesky = {_matrix(L)}")
    if obs.robust is not None:  # the robust update (_models/robust.py)
        lines += ["", "[observation.robust]", f'kind = "{obs.robust.kind}"']
        lines += [
            f"{f} = {_float(arr(getattr(obs.robust, f)))}"
            for f, _ in constrained_fields(obs.robust)
        ]
    if risk is not None:
        lines += ["", "[risk]"]
        lines += [f"{f} = {_float(arr(getattr(risk, f)))}" for f, _ in constrained_fields(risk)]
        lines.append(f"threshold = {_float(risk.threshold)}")
    text = "\n".join(lines) + "\n"
    if metadata:
        v.instance("metadata", metadata, dict, "a dict")
        try:
            text += "\n" + _tomli_w().dumps({"metadata": metadata})
        except (TypeError, ValueError) as err:
            raise ValueError(f"`metadata` must hold TOML values only: {err}") from None
    return text


def _tomli_w():
    """tomli-w (a dependency), imported when a config is written: ``import drift_jax``
    works without it (e.g. on an accelerator image that has only JAX)."""
    import tomli_w

    return tomli_w


def _float(x) -> str:
    return repr(float(x))


def _vector(x: np.ndarray) -> str:
    return "[" + ", ".join(_float(v) for v in np.ravel(x)) + "]"


def _matrix(x: np.ndarray) -> str:
    return "[\n" + "".join(f"    {_vector(row)},\n" for row in np.atleast_2d(x)) + "]"


def _lit(s: str) -> str:
    """A TOML string literal (tomli_w's escaping)."""
    return _tomli_w().dumps({"k": str(s)})[len("k = ") : -1]


def _feature_names(names, m: int) -> tuple[str, ...]:
    names = (names,) if isinstance(names, str) else tuple(names)
    if len(names) != m or not all(isinstance(s, str) for s in names):
        raise ValueError(
            f"`feature_names` must be {m} strings (one per feature), got {list(names)!r}."
        )
    return names


def config_from_toml(
    text: str, *, source: str = "<config>", normalise: bool | float = False
) -> DriftConfig:
    """Parse TOML config text (see ``load_config``); ``source`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from err
    return _Reader(source, _normalise_tolerance(normalise)).config(doc)


def _normalise_tolerance(normalise) -> float | None:
    if normalise is False or normalise is None:
        return None
    if normalise is True:
        return 1e-6
    return v.real(
        "normalise",
        normalise,
        "True, False or a tolerance in (0, 0.01]",
        lambda x: 0 < x <= 0.01,
    )


def _x64_enabled() -> bool:
    import jax

    return bool(jax.config.jax_enable_x64)


class _Reader:
    """Reads the parsed TOML with errors that name the source and the key path."""

    def __init__(self, source: str, normalise: float | None = None):
        self.source = source
        self.normalise = normalise
        self.hint = ""  # appended to a model's error (hand-rounded rows, say)

    def fail(self, path: str, message: str):
        where = f"`{path}` " if path else ""
        raise ConfigError(f"{self.source}: {where}{message}")

    def get(self, table: dict, prefix: str, key: str, kind: str, *, default=None, need=True):
        path = f"{prefix}{key}"
        if key not in table:
            if need:
                self.fail("", f"missing key `{path}` ({kind}).")
            return default
        value = table[key]
        ok = {
            "number": _is_number,
            "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
            "string": lambda x: isinstance(x, str),
            "table": lambda x: isinstance(x, dict),
            "vector": _is_vector,
            "matrix": _is_matrix,
            "number or vector": lambda x: _is_number(x) or _is_vector(x),
            "number, vector or matrix": lambda x: _is_number(x) or _is_vector(x) or _is_matrix(x),
            "string or integer": lambda x: isinstance(x, str | int) and not isinstance(x, bool),
            "list of strings": lambda x: (
                isinstance(x, list) and all(isinstance(s, str) for s in x)
            ),
            "array of tables": lambda x: (
                isinstance(x, list) and all(isinstance(t, dict) for t in x)
            ),
        }[kind]
        if not ok(value):
            article = "an" if kind[0] in "aeiou" else "a"
            self.fail(path, f"must be {article} {kind}, got {value!r} ({type(value).__name__}).")
        if _is_matrix(value) and len({len(r) for r in value}) != 1:
            self.fail(path, f"must be a matrix with rows of one length, got {value!r}.")
        return value

    def only(self, table: dict, prefix: str, allowed: tuple[str, ...]):
        for key in table:
            if key not in allowed:
                self.fail(f"{prefix}{key}", f"is not a known key here; allowed: {list(allowed)}.")

    def choice(self, table, prefix, key, allowed, default=None):
        value = self.get(table, prefix, key, "string", default=default, need=default is None)
        if value not in allowed:
            self.fail(f"{prefix}{key}", f"must be one of {list(allowed)}, got {value!r}.")
        return value

    def build(self, path: str, make):
        """Run a model constructor; its ValueError is prefixed with the key path."""
        try:
            return make()
        except ValueError as err:
            text = f"is invalid: {err}" if path else f"invalid model: {err}"
            self.fail(path, text + self.hint)

    def config(self, doc: dict) -> DriftConfig:
        if "schema_version" not in doc:
            supported = list(SUPPORTED_SCHEMA_VERSIONS)
            self.fail("", f"missing key `schema_version` (this drift_jax reads {supported}).")
        version = self.get(doc, "", "schema_version", "integer")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            self.fail(
                "schema_version",
                f"is {version}; this drift_jax reads schema versions "
                f"{list(SUPPORTED_SCHEMA_VERSIONS)} (a newer drift_jax may read it).",
            )
        kind = self.choice(doc, "", "kind", _KINDS)
        top = ("schema_version", "kind", "dtype", "init_mean", "init_cov", "regimes")
        top += ("observation", "risk", "metadata")
        if kind == "imm":
            top += ("transition", "rates", "init_probs", "crisis_regime")
        self.only(doc, "", top)
        dtype = np.dtype(self.choice(doc, "", "dtype", _DTYPES, default="float64"))
        self.dtype = dtype
        if dtype == np.float64 and not _x64_enabled():
            warnings.warn(
                DataWarning(
                    f'{self.source}: dtype = "float64" but JAX\'s x64 mode is off, so the '
                    "model loads as float32 (every parameter rounded to float32, and the "
                    'filter runs in float32). Call jax.config.update("jax_enable_x64", '
                    "True) before loading to keep float64."
                ),
                stacklevel=3,
            )
        regimes = self.get(doc, "", "regimes", "array of tables")
        if not regimes or (kind == "kalman" and len(regimes) != 1):
            want = "exactly 1 regime for kind 'kalman'" if kind == "kalman" else ">= 1 regime"
            self.fail("regimes", f"must hold {want}, got {len(regimes)}.")
        members = [self.dynamics(r, f"regimes[{k}].", dtype) for k, r in enumerate(regimes)]
        obs, names = self.observation(self.get(doc, "", "observation", "table"), dtype)
        prior = {}
        for key, shape in (
            ("init_mean", "number or vector"),
            ("init_cov", "number, vector or matrix"),
        ):
            if key in doc:
                prior[key] = np.asarray(self.get(doc, "", key, shape), dtype)
        if kind == "kalman":
            model = self.build("", lambda: KalmanModel(members[0], obs, **prior))
        else:
            if ("transition" in doc) == ("rates" in doc):
                given = "both" if "transition" in doc else "neither"
                self.fail(
                    "",
                    "an imm config needs exactly one regime chain: `transition` (Pi, per "
                    f"cycle) or `rates` (a generator, per second); it has {given}.",
                )
            chain = {}
            if "rates" in doc:
                chain["rates"] = np.asarray(self.get(doc, "", "rates", "matrix"), dtype)
                if chain["rates"].shape != (len(members), len(members)):
                    self.fail("rates", f"must be [M, M] = [{len(members)}, {len(members)}].")
                constraint = field_constraint(IMMModel, "rates")
                if not constraint.is_valid(chain["rates"]):
                    self.fail(
                        "rates",
                        f"must be {constraint.allowed} (within "
                        f"{constraint.row_tolerance(dtype):g} x max(1, max|row|)), got "
                        f"{doc['rates']!r}.",
                    )
            else:
                transition = self.get(doc, "", "transition", "matrix")
                chain["transition"] = np.asarray(self.stochastic("transition", transition), dtype)
            probs = self.get(doc, "", "init_probs", "vector", need=False)
            if probs is not None:
                probs = self.stochastic("init_probs", [probs])[0]
            crisis = self.get(doc, "", "crisis_regime", "string or integer", need=False)
            labels = [r.get("name", f"regime{k}") for k, r in enumerate(regimes)]
            model = self.build(
                "",
                lambda: IMMModel(
                    tuple(members),
                    obs,
                    init_probs=None if probs is None else np.asarray(probs, dtype),
                    **prior,
                    **chain,
                    regime_names=labels,
                    crisis_regime=crisis,
                ),
            )
        risk = None
        if "risk" in doc:
            risk = self.risk(self.get(doc, "", "risk", "table"), dtype)
        metadata = self.get(doc, "", "metadata", "table", default={}, need=False)
        return DriftConfig(model, risk, names, metadata)

    def stochastic(self, key: str, rows: list) -> list:
        """Rows that must sum to 1: with ``normalise``, those within its tolerance are
        divided by their exact sum (each entry rounded once); otherwise they are checked
        here so the message can name the option."""
        tol = 1e-9 if self.dtype == np.float64 else 1e-5
        sums = [math.fsum(r) for r in rows]
        # half the model's tolerance: a row at its edge may fail the model's own sum
        off = [i for i, s in enumerate(sums) if not abs(s - 1.0) <= tol / 2]
        near = [i for i in off if abs(sums[i] - 1.0) <= 1e-6]
        if near and self.normalise is None:
            what = f"row(s) {near} of `{key}`" if len(rows) > 1 else f"`{key}`"
            self.hint += (
                f" {what} sum to {[sums[i] for i in near]} (hand-rounded?): load with "
                "normalise=True (dj.load_config(path, normalise=True)) to divide them by "
                "their sums, or fix the file."
            )
        if not off:
            return rows
        if self.normalise is None:
            return rows  # the model checks them (its error gets `hint` below)
        far = [i for i in off if not abs(sums[i] - 1.0) <= self.normalise]
        if far:
            self.fail(
                key,
                f"row(s) {far} sum to {[sums[i] for i in far]}, further from 1 than "
                f"normalise={self.normalise:g}: not a rounding; fix the file.",
            )
        out = [list(r) for r in rows]
        for i in off:
            exact = [Fraction(x) for x in rows[i]]
            total = sum(exact)
            out[i] = [float(x / total) for x in exact]
        which = f"row(s) {off} of `{key}`" if len(rows) > 1 else f"`{key}`"
        warnings.warn(
            DataWarning(
                f"{self.source}: {which} summed to {[sums[i] for i in off]}; divided by "
                f"their sums (normalise={self.normalise:g})."
            ),
            stacklevel=4,
        )
        return out

    def parameters(self, table: dict, p: str, cls, dtype) -> dict:
        """The scalar parameters of ``cls`` (its fields that declare a constraint), each
        checked against its declared constraint."""
        declared = constrained_fields(cls)
        values = {f: np.asarray(self.get(table, p, f, "number"), dtype) for f, _ in declared}
        for f, constraint in declared:
            if not constraint.is_valid(values[f]):
                self.fail(
                    p[:-1],
                    f"is invalid: `{f}` must be {constraint.allowed}; got {f}={table[f]!r}.",
                )
        return values

    def dynamics(self, r: dict, p: str, dtype):
        kinds = {"OU": OU, "OUAccel": OUAccel}
        cls = self.choice(r, p, "dynamics", tuple(kinds))
        make = kinds[cls]
        keys = tuple(f for f, _ in constrained_fields(make))
        self.only(r, p, ("name", "dynamics", "discretisation") + keys)
        if "name" in r:
            self.get(r, p, "name", "string")
        values = self.parameters(r, p, make, dtype)
        disc = self.choice(r, p, "discretisation", ("euler", "exact"), default="euler")
        return self.build(p[:-1], lambda: make(**values, discretisation=disc))

    def observation(self, o: dict, dtype):
        p = "observation."
        keys = ("update", "feature_names", "loadings", "cov", "cov_cholesky", "robust")
        self.only(o, p, keys)
        robust = self.robust(o, p, dtype)
        update = self.choice(o, p, "update", ("joint", "independent"), default="joint")
        loadings = np.asarray(self.get(o, p, "loadings", "vector"), dtype)
        m = loadings.shape[0]
        mats = {k: self.get(o, p, k, "matrix", need=False) for k in ("cov", "cov_cholesky")}
        for key, value in mats.items():
            if value is not None and np.shape(value) != (m, m):
                self.fail(p + key, f"must be [m, m] = [{m}, {m}] (m = len(loadings)).")
        names = self.get(o, p, "feature_names", "list of strings", need=False)
        if names is not None and len(names) != m:
            self.fail(p + "feature_names", f"must hold {m} names (one per loading): {names}.")
        names = None if names is None else tuple(names)
        if mats["cov_cholesky"] is None:
            if mats["cov"] is None:
                self.fail("", f"missing key `{p}cov` (or `{p}cov_cholesky`).")
            R = np.asarray(mats["cov"], dtype)
            return self.build(
                p[:-1],
                lambda: Observation(loadings, R, update, feature_names=names, robust=robust),
            ), names
        L = np.asarray(mats["cov_cholesky"], dtype)
        factor = field_constraint(Observation, "cov_chol")
        if not factor.is_valid(L):
            self.fail(p + "cov_cholesky", f"must be {factor.allowed}, got {L.tolist()}.")
        if mats["cov"] is not None:
            C = xa.gram(L.astype(np.float64))
            gap = float(np.max(np.abs(np.asarray(mats["cov"], np.float64) - C)))
            scale = float(np.max(np.abs(C)))
            if not gap <= _COV_RTOL * scale:
                hint = ""
                if dtype != np.float64:
                    exact64 = xa.gram(np.asarray(mats["cov_cholesky"], np.float64))
                    was64 = float(np.max(np.abs(np.asarray(mats["cov"], np.float64) - exact64)))
                    if was64 <= _COV_RTOL * scale:
                        hint = (
                            f" The file's dtype is {dtype.name}: cov_cholesky rounded to "
                            f"{dtype.name} no longer gives cov, which matches the float64 "
                            "factor (was the dtype edited from float64?). Set dtype back to "
                            '"float64", or remove `cov` (the factor is what the model '
                            "holds), or save the model again in the new dtype."
                        )
                    else:
                        hint = f" (the file's dtype is {dtype.name}.)"
                self.fail(
                    p + "cov",
                    f"disagrees with cov_cholesky @ cov_cholesky.T: max difference {gap:.3g} "
                    f"> {_COV_RTOL:g} x max|cov| = {_COV_RTOL * scale:.3g}.{hint}",
                )
        # The model keeps the factor it was saved with, bit for bit (not a re-factorisation).
        return self.build(
            p[:-1],
            lambda: Observation.from_cholesky(
                loadings, L, update, feature_names=names, robust=robust
            ),
        ), names

    def robust(self, o: dict, p: str, dtype):
        """``[observation.robust]``: ``kind`` and the option's parameters (``None``: none)."""
        if "robust" not in o:
            return None
        r = self.get(o, p, "robust", "table")
        q = p + "robust."
        cls = ROBUST_KINDS[self.choice(r, q, "kind", tuple(ROBUST_KINDS))]
        self.only(r, q, ("kind",) + tuple(f for f, _ in constrained_fields(cls)))
        values = self.parameters(r, q, cls, dtype)
        return self.build(q[:-1], lambda: cls(**values))

    def risk(self, r: dict, dtype) -> RiskModel:
        p = "risk."
        self.only(r, p, tuple(f for f, _ in constrained_fields(RiskModel)) + ("threshold",))
        values = self.parameters(r, p, RiskModel, dtype)
        threshold = float(self.get(r, p, "threshold", "number", default=0.3, need=False))
        return self.build("risk", lambda: RiskModel(**values, threshold=threshold))


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_vector(x) -> bool:
    return isinstance(x, list) and all(map(_is_number, x))


def _is_matrix(x) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(map(_is_vector, x))
