"""Engine side of MoE Trader: data, features, orchestration, execution, backtests."""
