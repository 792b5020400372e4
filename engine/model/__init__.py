"""The signal model: configuration (``config``), the torch reference (``ssm``), weights files
(``weights``) and the compiled runtime behind them. Only ``ssm`` imports torch. Training lives above
the backtest, in ``engine.training``."""
