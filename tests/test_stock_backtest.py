"""Backtests and forecasts on real AMZN minutes count session bars: no fill outside RTH, Sharpe annualised
by session bars per year, optional flat at each session's end (both modes), and Kronos' future bars
following the NYSE calendar."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_kronos_dir

from compose import backtest_components
from core.backtest.runner import RunRequest, run_backtest
from core.config import ExpertConfig, load_config, load_models
from core.data.clean import clean_candles
from core.data.files import load_file
from core.data.store import MarketStore
from core.market import SessionCalendar
from core.types import SeriesKey, Thresholds

ET = "America/New_York"
RTH = SessionCalendar("XNYS", "rth")
FILE = "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv"


def _hm(ts: np.ndarray) -> list[str]:
    return pd.DatetimeIndex(pd.to_datetime(ts, unit="ms", utc=True)).tz_convert(ET).strftime("%m-%d %H:%M").tolist()


@pytest.fixture
def setup(shared_data: Path, tmp_path: Path):
    """A store holding AMZN WITH its pre/post-market bars (imported under session: extended), and a
    config whose AMZN market is RTH: the backtest must trade only the RTH bars."""
    raw = load_file(shared_data / "stocks" / FILE)
    ext = clean_candles(raw, "1m", SessionCalendar("XNYS", "extended")).candles
    assert len(ext) == len(raw)  # every bar of the file lies in the extended session
    store = MarketStore(tmp_path / "amzn.duckdb")
    store.upsert_candles(SeriesKey("alpaca", "AMZN", "1m"), ext, validate=False)
    cfg = load_config()
    cfg = cfg.model_copy(update={"backtest": cfg.backtest.model_copy(update={"reports_dir": str(tmp_path)})})
    models = load_models()
    feats = models.features.model_copy(update={"window": 16, "norm_window": 100, "timeframes": ["1m", "5m", "1h", "1d"]})
    models = models.model_copy(update={"features": feats})
    yield store, cfg, models, tmp_path
    store.close()


def test_backtest_on_amzn_never_fills_outside_rth_and_annualises_by_session_bars(setup) -> None:
    store, cfg, models, tmp = setup
    rep = run_backtest(RunRequest(symbol="AMZN", experts=("cnn",), thresholds=Thresholds(0.0, 0.0), mode="fast"),
                       cfg=cfg, models=models, store=store, components=backtest_components, reports_dir=tmp)
    assert rep.spec.exchange == "alpaca"
    ts = np.asarray(rep.series.ts, dtype=np.int64)
    assert len(ts) == 5 * 390 and RTH.contains(ts, 60_000).all()  # only RTH bars were replayed
    fills = rep.fills["ts"].to_numpy(np.int64)
    assert len(fills) > 50  # buy/sell thresholds at 0: the untrained CNN trades all the time
    assert RTH.contains(fills, 60_000).all(), [t for t, ok in zip(_hm(fills), RTH.contains(fills, 60_000),
                                                                   strict=True) if not ok][:5]
    assert not any("04:00" <= h[-5:] < "09:30" or h[-5:] >= "16:00" for h in _hm(fills))
    ppy = RTH.bars_per_year("1m")
    assert rep.metrics["periods_per_year"] == ppy and 97_000 < ppy < 98_500
    eq = np.r_[cfg.execution.initial_cash, np.asarray(rep.series.equity, dtype=np.float64)]
    r = eq[1:] / eq[:-1] - 1.0
    assert rep.metrics["sharpe"] == pytest.approx(np.mean(r) / np.std(r, ddof=1) * math.sqrt(ppy), rel=1e-9)


def test_flat_at_session_end_holds_nothing_overnight_in_both_modes(setup) -> None:
    store, cfg, models, tmp = setup
    cfg = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"flat_at_session_end": True})})
    end = int(pd.Timestamp("2025-01-14 15:00", tz="UTC").value // 1_000_000)  # a session and 30 minutes
    # buy threshold 0, sell threshold 1: BUY at every decision, so the only exits are the session's end
    # (and the kernel's stops)
    reps = {mode: run_backtest(RunRequest(symbol="AMZN", experts=("cnn",), thresholds=Thresholds(0.0, 1.0),
                                          mode=mode, end_ms=end),
                               cfg=cfg, models=models, store=store, components=backtest_components, reports_dir=tmp)
            for mode in ("fast", "event")}
    fast, event = reps["fast"], reps["event"]
    ts = np.asarray(fast.series.ts, dtype=np.int64)
    last_bar = RTH.bars_to_close(ts, "1m") == 0
    assert int(last_bar.sum()) == 1 and len(ts) == 420
    fills = fast.fills
    # the flattening order goes in at 15:58's close and fills at 15:59's open; nothing is held at 16:00
    pos = np.cumsum(np.where(fills["side"] == "buy", 1.0, -1.0) * fills["amount"].to_numpy())
    at_close = [pos[np.searchsorted(fills["ts"].to_numpy(np.int64), t, side="right") - 1] for t in ts[last_bar]]
    assert np.allclose(at_close, 0.0, atol=1e-9)
    sells = _hm(fills["ts"].to_numpy(np.int64)[(fills["side"] == "sell").to_numpy()])
    assert "01-13 15:59" in sells
    buys = _hm(fills["ts"].to_numpy(np.int64)[(fills["side"] == "buy").to_numpy()])
    assert "01-14 09:31" in buys  # back in at the next session (decided at 09:30's close)
    pd.testing.assert_frame_equal(fast.fills.reset_index(drop=True), event.fills.reset_index(drop=True))
    np.testing.assert_allclose(fast.series.equity, event.series.equity, rtol=0, atol=1e-9)


def test_kronos_forecast_from_1559_starts_at_the_next_sessions_0930(shared_data: Path, tmp_path: Path) -> None:
    from core.features import FeatureBuilder
    from core.snapshot import ExpertInfo, kronos_summary
    from NN.experts.kronos.expert import KronosExpert

    rth = clean_candles(load_file(shared_data / "stocks" / FILE), "1m", RTH).candles
    hm = _hm(rth["ts"].to_numpy(np.int64))
    end = hm.index("01-13 15:59") + 1
    ctx = rth.iloc[end - 64:end].reset_index(drop=True)
    cfg = ExpertConfig.model_validate({"class": "NN.experts.kronos.expert.KronosExpert", "device": "cpu",
                                       "horizon": 5, "params": {"model": str(tiny_kronos_dir(tmp_path)),
                                                                "lookback": 64, "samples": 4, "calibrated": False}})
    expert = KronosExpert("kronos", cfg, FeatureBuilder(load_models().features, "1m").spec)
    plain = expert.forecast(ctx, "1m")  # 24x7 (no calendar): the old clock arithmetic
    assert _hm(plain.future_ts)[0] == "01-13 16:00"
    expert.calendar = RTH
    fc = expert.forecast(ctx, "1m")
    assert _hm(fc.future_ts) == ["01-14 09:30", "01-14 09:31", "01-14 09:32", "01-14 09:33", "01-14 09:34"]
    assert fc.paths.shape == (4, 5, 6) and np.isfinite(fc.paths).all()
    # the dashboard's fan ends on the calendar too (5 bars after 15:58 -> next day's 09:33)
    base = rth.iloc[:end - 1]
    out = expert.predict_many(FeatureBuilder(load_models().features, "1m", calendar=RTH).build_many(
        base, rows=slice(len(base) - 1, None)), base)
    from core.types import ExpertOutput

    o = ExpertOutput("kronos", "v", "AMZN", int(base["ts"].iat[-1]), 5, tuple(out.probs[0]), 0.0, 0.5, 1.0,
                     {k: float(v[0]) for k, v in out.extras.items()})
    k = kronos_summary({"kronos": o}, {"kronos": ExpertInfo("v", "candles", True, True)}, base, "1m", 0, RTH)
    assert k is not None and _hm(k.future_ts) == ["01-13 15:58", "01-14 09:33"]
