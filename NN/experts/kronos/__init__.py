"""Kronos-compatible candle forecaster: networks, KV-cached sampler, summary, calibration, training."""
