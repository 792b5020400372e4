"""Portfolio allocation on the portfolio seam (strategies/portfolio.py): a module per concept.

- ``constraints``: the feasible set (long-only or long-short, cap per asset, gross limit, net
  target) and the projection onto it;
- ``estimators``: a rolling window of marks sampled at each rebalance, returns, sample mean and
  Ledoit-Wolf covariance;
- ``allocators``: pure functions (expected returns, covariance, constraints) -> weights;
- ``scenarios``: seeded scenario generators (block bootstrap, calibrated GBM, GARCH jump diffusion);
- ``cvar``: the Rockafellar-Uryasev Mean-CVaR linear program (HiGHS);
- ``rebalance``: ``Allocation``, the PortfolioStrategy that runs an allocator on a rebalance clock.

scipy and scikit-learn come with the ``portfolio`` extra; they are imported where used.
"""
