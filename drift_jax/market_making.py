"""The drift estimator in the quoting loop: a market-making harness, as ``dj.market_making``.

- Quotes (bps from the mid): ``glft_quotes`` (Gueant-Lehalle-Fernandez-Tapia 2013, the
  asymptotic closed form with drift), ``avellaneda_stoikov_quotes`` (the reservation price
  with drift and inventory over a horizon) and ``glft_horizon`` (the horizon at which the
  two coincide).
- Strategies (equinox Modules): ``GLFTStrategy``, ``AvellanedaStoikovStrategy``,
  ``FixedSpread``; the order flow ``FillModel`` (fills ``A exp(-k delta)`` per second).
- What a strategy quotes from: a drift model (``dj.KalmanModel`` / ``dj.IMMModel``),
  ``NoSignal()``, ``Oracle()`` (the true drift), or a ``Quoter`` (an estimator with its
  own strategy).
- ``backtest(estimators, paths, strategy, key=...)``: every estimator on the same paths
  and fill draws, chunked and sharded like ``dj.monte_carlo``; a
  ``MarketMakingReport`` (PnL, inventory, fills, spread, markouts, drawdown; table,
  csv/md/npz, plots).
- The smooth objective: ``expected_pnl`` (fills replaced by their probabilities),
  ``objective`` (minus the expected score per hour, differentiable in the strategy and
  the estimator) and ``tune`` (optax, as ``dj.fit``).

See ``drift_jax/_market_making/`` and README "Market making".
"""

from ._market_making.backtest import (
    MARKOUT_HORIZONS as MARKOUT_HORIZONS,
    backtest as backtest,
)
from ._market_making.objective import (
    ExpectedPnL as ExpectedPnL,
    TuneParams as TuneParams,
    TuneResult as TuneResult,
    expected_pnl as expected_pnl,
    objective as objective,
    tune as tune,
)
from ._market_making.quotes import (
    avellaneda_stoikov_quotes as avellaneda_stoikov_quotes,
    glft_horizon as glft_horizon,
    glft_quotes as glft_quotes,
)
from ._market_making.report import MarketMakingReport as MarketMakingReport
from ._market_making.signals import NoSignal as NoSignal, Oracle as Oracle, Quoter as Quoter
from ._market_making.strategy import (
    AbstractStrategy as AbstractStrategy,
    AvellanedaStoikovStrategy as AvellanedaStoikovStrategy,
    FillModel as FillModel,
    FixedSpread as FixedSpread,
    GLFTStrategy as GLFTStrategy,
)
