"""drift_jax: regime-robust, differentiable estimation of a price's short-term drift.

See README.md and docs/design.md. Public names are re-exported here; implementations live in
private modules.
"""

from . import (
    distributed as distributed,
    market_making as market_making,
    metrics as metrics,
    scenarios as scenarios,
)
from ._core.inputs import check_finite as check_finite
from ._core.jit import TracedCheckError as TracedCheckError, jit as jit
from ._core.validate import DataWarning as DataWarning
from ._evaluation.montecarlo import (
    MonteCarloReport as MonteCarloReport,
    monte_carlo as monte_carlo,
)
from ._filters.exact import ExactResult as ExactResult, exact_posterior as exact_posterior
from ._filters.filter import filter as filter
from ._filters.forecast import Forecast as Forecast, forecast as forecast
from ._filters.imm import (
    IMMModel as IMMModel,
    IMMResult as IMMResult,
    IMMState as IMMState,
    stationary_distribution as stationary_distribution,
)
from ._filters.kalman import (
    KalmanModel as KalmanModel,
    KalmanResult as KalmanResult,
    KalmanState as KalmanState,
)
from ._filters.methods import (
    AbstractAdjoint as AbstractAdjoint,
    AbstractFilterMethod as AbstractFilterMethod,
    Associative as Associative,
    CheckpointAdjoint as CheckpointAdjoint,
    Chunked as Chunked,
    DirectAdjoint as DirectAdjoint,
    FusedAdjoint as FusedAdjoint,
    Sequential as Sequential,
)
from ._filters.smoother import SmoothResult as SmoothResult, smooth as smooth
from ._filters.streaming import (
    IMMDriftEstimator as IMMDriftEstimator,
    KalmanDriftEstimator as KalmanDriftEstimator,
    StepOutputs as StepOutputs,
    StreamingStep as StreamingStep,
    streaming_step as streaming_step,
)
from ._fitting.calibrate import (
    Calibration as Calibration,
    calibrate_observation as calibrate_observation,
    ledoit_wolf as ledoit_wolf,
)
from ._fitting.fit import FitResult as FitResult, fit as fit, fit_batch as fit_batch
from ._fitting.losses import (
    dirichlet_prior as dirichlet_prior,
    feature_nll as feature_nll,
    fit_loss as fit_loss,
    return_nll as return_nll,
    sticky_prior as sticky_prior,
)
from ._fitting.params import (
    FitParams as FitParams,
    Unconstrained as Unconstrained,
    constrain as constrain,
    trainable_mask as trainable_mask,
    unconstrain as unconstrain,
)
from ._fitting.uncertainty import (
    StandardErrors as StandardErrors,
    standard_errors as standard_errors,
)
from ._io.config import (
    ConfigError as ConfigError,
    DriftConfig as DriftConfig,
    config_from_toml as config_from_toml,
    config_to_toml as config_to_toml,
    load_config as load_config,
    save_config as save_config,
)
from ._io.feature_table import realised_drift as realised_drift
from ._io.golden import (
    golden_vectors as golden_vectors,
    load_golden as load_golden,
    save_golden as save_golden,
)
from ._io.history import (
    History as History,
    HistoryError as HistoryError,
    read_history as read_history,
    simple_returns as simple_returns,
)
from ._models.constraints import (
    AbstractConstraint as AbstractConstraint,
    Generator as Generator,
    LowerCholesky as LowerCholesky,
    NonNegative as NonNegative,
    Positive as Positive,
    PositiveDefinite as PositiveDefinite,
    Real as Real,
    Simplex as Simplex,
    SimplexRows as SimplexRows,
)
from ._models.dynamics import (
    OU as OU,
    AbstractDynamics as AbstractDynamics,
    OUAccel as OUAccel,
)
from ._models.model import (
    AbstractDriftModel as AbstractDriftModel,
    AbstractFilterResult as AbstractFilterResult,
)
from ._models.observation import Observation as Observation
from ._models.presets import (
    REGIME_NAMES as REGIME_NAMES,
    SEED_REGIMES as SEED_REGIMES,
    SEED_TRANSITION as SEED_TRANSITION,
    seed_imm as seed_imm,
)
from ._models.rates import rates_from_transition as rates_from_transition
from ._models.returns import (
    AbstractReturnModel as AbstractReturnModel,
    RegimeReturnModel as RegimeReturnModel,
)
from ._models.risk import (
    RiskModel as RiskModel,
    is_crisis as is_crisis,
    sigma_effective as sigma_effective,
)
from ._models.robust import AbstractRobust as AbstractRobust, Huber as Huber, StudentT as StudentT
from ._simulation.simulate import (
    Paths as Paths,
    PathSimulator as PathSimulator,
    simulate as simulate,
    simulator as simulator,
)
from ._simulation.synthetic import default_observation as default_observation


def _package_version() -> str:
    """The installed distribution's version (pyproject.toml holds the one number)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("drift_jax")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "0+unknown"


__version__ = _package_version()
