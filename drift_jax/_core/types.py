"""Array aliases used on every public signature (jaxtyping).

Dimension names: ``T`` time steps, ``n`` state dimension (1 for ``[mu]``, 2 for
``[mu, mu_dot]``), ``m`` observed features, ``M`` regimes, ``B`` batch of paths.
"""

from collections.abc import Mapping

import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

try:
    from pandas import DataFrame as _DataFrame
except ImportError:  # pragma: no cover - a bare JAX image: named data is a Mapping
    _DataFrame = Mapping

#: Named feature data: matched to the model's ``feature_names`` (``_core/inputs.py``).
NamedFeatures = Mapping | _DataFrame

Scalar = Float[Array, ""]
ScalarLike = float | int | Float[ArrayLike, ""]
StateVector = Float[Array, " n"]
StateMatrix = Float[Array, "n n"]
ObsVector = Float[Array, " m"]
ObsMatrix = Float[Array, "m m"]
Loadings = Float[Array, " m"]
TimeSeries = Float[Array, " T"]
FeatureSeries = Float[Array, "T m"]
RegimeVector = Float[Array, " M"]
TransitionMatrix = Float[Array, "M M"]
ObsLike = (
    Float[ArrayLike, " T"] | Float[ArrayLike, "T m"] | np.ndarray | list | tuple | NamedFeatures
)
DtLike = float | int | Float[ArrayLike, ""] | Float[ArrayLike, " T"] | list | tuple

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Int",
    "Scalar",
    "ScalarLike",
    "StateVector",
    "StateMatrix",
    "ObsVector",
    "ObsMatrix",
    "Loadings",
    "TimeSeries",
    "FeatureSeries",
    "RegimeVector",
    "TransitionMatrix",
    "ObsLike",
    "NamedFeatures",
    "DtLike",
]
