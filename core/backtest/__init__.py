"""Backtest engine, metrics and reports."""
