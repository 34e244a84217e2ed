"""Validation rules. Real files must pass untouched; each rule is shown rejecting a HAND-WRITTEN bad
candle (edge cases are written by hand on purpose: the shared data holds no broken rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.files import load_file, parse_series_name
from core.data.validate import REASONS, validate_candles, validate_trades

T0 = 1_677_628_800_000  # 2023-03-01T00:00Z
NOW = T0 + 10 * 60_000


def good(ts: int) -> dict:
    return {"ts": ts, "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 3.0}


def test_real_files_pass(crypto_candle_files: list[Path]) -> None:
    for f in crypto_candle_files:
        sym, tf = parse_series_name(f)
        df = load_file(f)
        res = validate_candles(df, tf)
        assert res.counts == {}, f
        assert len(res.valid) == len(df)


@pytest.mark.parametrize(
    "reason, row",
    [
        ("missing_value", {**good(T0 + 60_000), "close": float("nan")}),
        ("missing_value", {**good(T0 + 60_000), "volume": float("inf")}),
        ("non_positive_price", {**good(T0 + 60_000), "open": 0.0, "low": 0.0}),
        ("non_positive_price", {**good(T0 + 60_000), "low": -1.0}),
        ("high_below_low", {**good(T0 + 60_000), "high": 98.0}),
        ("high_below_body", {**good(T0 + 60_000), "high": 100.2}),
        ("low_above_body", {**good(T0 + 60_000), "low": 100.2}),
        ("negative_volume", {**good(T0 + 60_000), "volume": -0.1}),
        ("off_grid", good(T0 + 60_000 + 1_500)),
        ("future", good(NOW + 60_000)),
        ("duplicate_ts", good(T0)),
        ("out_of_order", good(T0 - 120_000)),
    ],
)
def test_each_rule_rejects_with_reason(reason: str, row: dict, caplog: pytest.LogCaptureFixture) -> None:
    df = pd.DataFrame([good(T0), row, good(T0 + 120_000)])
    with caplog.at_level("DEBUG", logger="core.data.validate"):
        res = validate_candles(df, "1m", now_ms=NOW)
    assert res.counts == {reason: 1}
    assert res.rejected["reason"].tolist() == [reason]
    assert res.valid["ts"].tolist() == [T0, T0 + 120_000]  # the good rows are kept, nothing repaired
    assert reason in caplog.text  # counted AND logged with its reason


def test_last_ts_and_future_margin() -> None:
    df = pd.DataFrame([good(T0), good(T0 + 60_000)])
    res = validate_candles(df, "1m", now_ms=NOW, last_ts=T0)  # == last_ts: an update, allowed
    assert res.counts == {}
    res = validate_candles(df, "1m", now_ms=NOW, last_ts=T0 + 60_000)
    assert res.counts == {"out_of_order": 1}
    near = pd.DataFrame([good(NOW + 60_000)])
    assert validate_candles(near, "1m", now_ms=NOW, max_future_ms=60_000).counts == {}
    assert validate_candles(near, "1m", now_ms=NOW, max_future_ms=59_999).counts == {"future": 1}


def test_counts_many_rows_and_first_reason_wins() -> None:
    rows = [good(T0 + i * 60_000) for i in range(6)]
    rows[1]["close"] = np.nan
    rows[2]["high"] = 1.0  # below low and below body: high_below_low is checked first
    rows[3]["volume"] = -5
    rows.append(good(T0 + 4 * 60_000))  # duplicate of row 4's ts (also late: duplicate is reported)
    rows.append(good(T0 + 60_000))  # row 1 was rejected, so this one is not a duplicate but late
    res = validate_candles(pd.DataFrame(rows), "1m", now_ms=T0 + 10**9)
    assert res.counts == {"missing_value": 1, "high_below_low": 1, "negative_volume": 1, "duplicate_ts": 1,
                          "out_of_order": 1}
    assert res.n_rejected == 5 and len(res.valid) == 3
    assert set(res.counts) <= set(REASONS)


def test_weekly_grid_is_monday_aligned() -> None:
    monday = 1_677_456_000_000  # 2023-02-27 00:00 UTC, a Monday
    ok = validate_candles(pd.DataFrame([good(monday)]), "1w", now_ms=NOW)
    assert ok.counts == {}
    bad = validate_candles(pd.DataFrame([good(monday + 86_400_000)]), "1w", now_ms=NOW)
    assert bad.counts == {"off_grid": 1}


def test_missing_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="missing column"):
        validate_candles(pd.DataFrame({"ts": [T0], "open": [1.0]}), "1m")


def test_trades_rules_hand_written() -> None:
    df = pd.DataFrame(
        {
            "ts": [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 + 5],
            "id": ["1", "2", None, "4", "5", "1"],
            "side": ["buy", "sell", "buy", "hold", "buy", "buy"],
            "price": [1.0, -1.0, 1.0, 1.0, 1.0, 1.0],
            "amount": [1.0, 1.0, 1.0, 1.0, -2.0, 1.0],
        }
    )
    res = validate_trades(df)
    assert res.rejected["reason"].tolist() == [
        "non_positive_price", "missing_id", "bad_side", "negative_amount", "duplicate_id"]
    assert res.valid["id"].tolist() == ["1"]
