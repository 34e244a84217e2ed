"""core.indicators cross-checked against the `ta` library on real BTC/USDT 1m candles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ta

from core import indicators as ind
from core.data.files import load_file as load_candles

N_BARS = 10_000
WARM = 300  # bars after which differently-seeded recursive filters agree to ~1e-9


@pytest.fixture(scope="module")
def btc(shared_data: Path) -> pd.DataFrame:
    return load_candles(shared_data / "binanceus" / "BTC_USDT-1m.csv").iloc[:N_BARS].reset_index(drop=True)


def same(
    ours: np.ndarray, theirs: pd.Series, start: int = 0, rtol: float = 1e-10, atol: float = 1e-9
) -> None:
    np.testing.assert_allclose(ours[start:], theirs.to_numpy(dtype=float)[start:], rtol=rtol, atol=atol)


def test_sma_ema_match_ta(btc: pd.DataFrame) -> None:
    c = btc.close
    s = ind.sma(c.to_numpy(), 20)
    assert np.isnan(s[:19]).all() and np.isfinite(s[19:]).all()
    same(s, ta.trend.SMAIndicator(c, 20).sma_indicator(), 19)
    e = ind.ema(c.to_numpy(), 12)
    assert np.isnan(e[:11]).all() and np.isfinite(e[11:]).all()
    same(e, ta.trend.EMAIndicator(c, 12).ema_indicator(), 11)


def test_macd_matches_ta(btc: pd.DataFrame) -> None:
    c = btc.close
    line, sig, hist = ind.macd(c.to_numpy(), 12, 26, 9)
    ref = ta.trend.MACD(c, window_slow=26, window_fast=12, window_sign=9)
    same(line, ref.macd(), 25)
    same(sig, ref.macd_signal(), 33)
    same(hist, ref.macd_diff(), 33)
    assert np.isnan(sig[:33]).all()


def test_rsi_matches_ta_after_warmup(btc: pd.DataFrame) -> None:
    c = btc.close
    r = ind.rsi(c.to_numpy(), 14)
    assert np.isnan(r[:14]).all() and np.isfinite(r[14:]).all()
    assert (r[14:] >= 0).all() and (r[14:] <= 100).all()
    # `ta` seeds Wilder's averages with 0, we seed with the mean of the first 14 changes
    same(r, ta.momentum.RSIIndicator(c, 14).rsi(), WARM, rtol=0, atol=1e-6)


def test_bollinger_matches_ta(btc: pd.DataFrame) -> None:
    c = btc.close
    mid, up, lo = ind.bollinger(c.to_numpy(), 20, 2.0)
    ref = ta.volatility.BollingerBands(c, window=20, window_dev=2)
    same(mid, ref.bollinger_mavg(), 19)
    same(up, ref.bollinger_hband(), 19)
    same(lo, ref.bollinger_lband(), 19)


def test_atr_matches_ta(btc: pd.DataFrame) -> None:
    a = ind.atr(btc.high.to_numpy(), btc.low.to_numpy(), btc.close.to_numpy(), 14)
    assert np.isnan(a[:13]).all() and np.isfinite(a[13:]).all()
    ref = ta.volatility.AverageTrueRange(btc.high, btc.low, btc.close, window=14).average_true_range()
    same(a, ref, 13)


def test_rolling_vwap_matches_ta(btc: pd.DataFrame) -> None:
    v = ind.vwap_rolling(*(btc[k].to_numpy() for k in ("high", "low", "close", "volume")), window=14)
    ref = ta.volume.VolumeWeightedAveragePrice(btc.high, btc.low, btc.close, btc.volume, window=14)
    same(v, ref.volume_weighted_average_price(), 13)


def test_session_vwap_resets_at_midnight_utc(btc: pd.DataFrame) -> None:
    """Independent check with pandas group-by day: cumulative sums restart at 00:00 UTC."""
    sv = ind.vwap_session(*(btc[k].to_numpy() for k in ("ts", "high", "low", "close", "volume")))
    tp = (btc.high + btc.low + btc.close) / 3
    day = btc.ts // 86_400_000
    exp = (tp * btc.volume).groupby(day).cumsum() / btc.volume.groupby(day).cumsum()
    same(sv, exp, 0, rtol=1e-9)
    first_bars = np.flatnonzero(btc.ts.to_numpy() % 86_400_000 == 0)
    assert len(first_bars) >= 6
    for i in first_bars:  # a new session starts from its own first bar
        assert sv[i] == pytest.approx(tp.iloc[i], rel=1e-12)


def test_indicators_use_only_the_past(btc: pd.DataFrame) -> None:
    """Change every bar after t: no value at <= t moves."""
    t = 4321
    cols = {k: btc[k].to_numpy().copy() for k in ("ts", "high", "low", "close", "volume")}
    bad = {k: v.copy() for k, v in cols.items()}
    for k in ("high", "low", "close"):
        bad[k][t + 1 :] *= 1.5
    bad["volume"][t + 1 :] = 0.0

    def all_of(d: dict[str, np.ndarray]) -> list[np.ndarray]:
        h, lo, c, v, ts = d["high"], d["low"], d["close"], d["volume"], d["ts"]
        return [
            ind.sma(c, 20),
            ind.ema(c, 26),
            *ind.macd(c),
            ind.rsi(c),
            *ind.bollinger(c),
            ind.atr(h, lo, c),
            ind.vwap_rolling(h, lo, c, v),
            ind.vwap_session(ts, h, lo, c, v),
            ind.log_returns(c),
        ]

    for a, b in zip(all_of(cols), all_of(bad), strict=True):
        np.testing.assert_array_equal(a[: t + 1], b[: t + 1])
        assert not np.array_equal(a[t + 1 :], b[t + 1 :], equal_nan=True)


def test_bad_arguments() -> None:
    """Hand-made edge cases."""
    with pytest.raises(ValueError, match="window"):
        ind.sma(np.ones(5), 0)
    with pytest.raises(ValueError, match="1-D"):
        ind.ema(np.ones((2, 2)), 3)
    with pytest.raises(ValueError, match="fast"):
        ind.macd(np.ones(50), 26, 12)
    assert np.isnan(ind.sma(np.ones(3), 5)).all()  # shorter than the window: all warm-up
    # flat prices: RSI reads 50, not a division error
    assert ind.rsi(np.full(30, 2.0))[-1] == 50.0
