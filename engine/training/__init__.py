"""Training the signal model: training sets cut from the engine's own feature tap (``dataset``), and
the torch training loop with its report (``train``). Above the backtest: it runs the engine to see
exactly the features inference sees. Needs torch (``pip install -e '.[train]'``)."""
