"""NYSE sessions on the shared stock files (../shared/data/stocks): filtering, validation, resampling
within sessions, gap reports, labels that do not span nights, and the market model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import AppConfig, MarketConfig
from core.data.clean import clean_candles
from core.data.files import load_file, parse_series_exchange, parse_series_name
from core.data.provider import DataProvider
from core.data.resample import resample
from core.data.store import MarketStore, session_gaps
from core.labels import horizon_ok
from core.market import AlwaysOpen, SessionCalendar, market_for
from core.types import SeriesKey

ET = "America/New_York"
RTH = SessionCalendar("XNYS", "rth")
# the 2021 NYSE holidays as published by the exchange (an independent list, not the calendar library)
HOLIDAYS_2021 = ["2021-01-01", "2021-01-18", "2021-02-15", "2021-04-02", "2021-05-31", "2021-07-05",
                 "2021-09-06", "2021-11-25", "2021-12-24"]


def _et(ts: np.ndarray | pd.Series) -> pd.Series:
    """Exchange-local times (keeping a Series' index, so the result can mask its frame)."""
    idx = ts.index if isinstance(ts, pd.Series) else None
    return pd.Series(pd.to_datetime(np.asarray(ts, dtype=np.int64), unit="ms", utc=True), index=idx).dt.tz_convert(ET)


def _stock(shared_data: Path, name: str) -> pd.DataFrame:
    return load_file(shared_data / "stocks" / name)


def test_amzn_2025_01_13_keeps_exactly_390_rth_minutes_of_765(shared_data: Path) -> None:
    raw = _stock(shared_data, "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv")
    day = _et(raw["ts"]).dt.strftime("%Y-%m-%d") == "2025-01-13"
    assert int(day.sum()) == 765
    out = clean_candles(raw, "1m", RTH)
    assert out.validation.n_rejected == 0
    t = _et(out.candles["ts"])
    kept = t[t.dt.strftime("%Y-%m-%d") == "2025-01-13"]
    assert len(kept) == 390
    assert kept.iloc[0].strftime("%H:%M") == "09:30" and kept.iloc[-1].strftime("%H:%M") == "15:59"
    assert (t.dt.strftime("%H:%M") >= "09:30").all() and (t.dt.strftime("%H:%M") <= "15:59").all()
    # every day of the week keeps its 390 minutes; the rest are counted as pre / post, not rejected
    assert t.dt.strftime("%Y-%m-%d").value_counts().tolist() == [390] * 5
    assert (out.session.pre, out.session.post, out.session.filtered) == (911, 708, 1619)


def test_upro_rejects_exactly_the_saturday_and_out_of_order_bars_and_ends_early_on_black_friday(
        shared_data: Path) -> None:
    raw = _stock(shared_data, "UPRO-1m-2020-01-02_2020-11-30.csv")
    out = clean_candles(raw, "1m", RTH)
    rej = out.validation.rejected
    assert out.validation.counts == {"outside_session": 130, "out_of_order": 1}
    t = _et(rej["ts"])
    sat = rej["reason"] == "outside_session"
    assert (t[sat].dt.day_of_week == 5).all()  # all 130 are Saturday bars (2020-07-18, 07-25)
    assert sorted(set(t[sat].dt.strftime("%Y-%m-%d"))) == ["2020-07-18", "2020-07-25"]
    assert t[~sat].dt.strftime("%Y-%m-%d %H:%M").tolist() == ["2020-10-21 15:10"]  # arrives after 15:38
    # nothing else is rejected: every raw row is either rejected, filtered (extended hours) or kept
    assert out.validation.n_rejected + out.session.filtered + len(out.candles) == len(raw)
    k = _et(out.candles["ts"])
    bf = k[k.dt.strftime("%Y-%m-%d") == "2020-11-27"]
    assert bf.max().strftime("%H:%M") == "12:59"  # early close at 13:00
    assert (k.dt.day_of_week < 5).all()


def test_amzn_hourly_2021_early_close_and_no_bar_on_any_holiday(shared_data: Path) -> None:
    raw = _stock(shared_data, "AMZN-1h-alpaca-2021.csv")
    out = clean_candles(raw, "1h", RTH)
    t = _et(out.candles["ts"])
    days = t.dt.strftime("%Y-%m-%d")
    assert not set(HOLIDAYS_2021) & set(days)
    last = t.groupby(days).max().dt.strftime("%H:%M")
    assert last["2021-11-26"] == "12:00"  # the 12:00-13:00 bar ends the early-close day
    assert last["2021-11-24"] == "15:00" and last.value_counts().idxmax() == "15:00"
    # Alpaca's clock-aligned 09:00 bar holds 30 minutes of pre-market: never kept as an RTH bar
    assert not (t.dt.strftime("%H:%M") == "09:00").any()
    assert out.session.straddling == 252 and out.validation.n_rejected == 0
    # daily vendor bars (stamped at New York midnight) become the session, opening 09:30
    daily = clean_candles(_stock(shared_data, "AMZN-1d-alpaca-2021.csv"), "1d", RTH)
    assert len(daily.candles) == 252 and set(_et(daily.candles["ts"]).dt.strftime("%H:%M")) == {"09:30"}


def test_hourly_and_daily_bars_resampled_within_sessions(shared_data: Path) -> None:
    raw = _stock(shared_data, "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv")
    rth = clean_candles(raw, "1m", RTH).candles
    hourly = resample(rth, "1m", "1h", calendar=RTH)
    t = _et(hourly["ts"])
    assert sorted(set(t.dt.strftime("%H:%M"))) == ["09:30", "10:30", "11:30", "12:30", "13:30", "14:30", "15:30"]
    assert len(hourly) == 35
    # independently: the first hourly bar of each day is 09:30-10:29 of the RTH minutes, no pre-market
    m = _et(rth["ts"])
    first = rth[(m.dt.strftime("%H:%M") >= "09:30") & (m.dt.strftime("%H:%M") < "10:30")]
    d0 = first[_et(first["ts"]).dt.strftime("%Y-%m-%d") == "2025-01-13"]
    h0 = hourly.iloc[0]
    assert (h0["open"], h0["high"], h0["low"], h0["close"], h0["volume"]) == (
        d0["open"].iloc[0], d0["high"].max(), d0["low"].min(), d0["close"].iloc[-1], d0["volume"].sum())
    pre_volume = raw[_et(raw["ts"]).dt.strftime("%Y-%m-%d %H:%M").between("2025-01-13 09:00", "2025-01-13 09:29")]
    assert len(pre_volume) and h0["volume"] == d0["volume"].sum()  # pre-market volume never mixed in
    # the daily bar is the session: open/high/low/close/volume of that day's RTH minutes
    daily = resample(rth, "1m", "1d", calendar=RTH)
    by_day = rth.groupby(m.dt.strftime("%Y-%m-%d").to_numpy())
    expect = pd.DataFrame({"open": by_day["open"].first(), "high": by_day["high"].max(),
                           "low": by_day["low"].min(), "close": by_day["close"].last(),
                           "volume": by_day["volume"].sum()}).reset_index(drop=True)
    pd.testing.assert_frame_equal(daily[["open", "high", "low", "close", "volume"]], expect)
    assert set(_et(daily["ts"]).dt.strftime("%H:%M")) == {"09:30"}
    # the live provider builds the same bars as the minutes close, with a short last hour (15:30-16:00)
    prov = DataProvider(None, "1m", ["1m", "1h", "1d"], cache_bars=5000, calendar=RTH)
    prov.ingest(SeriesKey("alpaca", "AMZN", "1m"), raw, now_ms_=int(raw["ts"].max()) + 60_000)
    pd.testing.assert_frame_equal(prov.snapshot("AMZN", "1h"), hourly)
    pd.testing.assert_frame_equal(prov.snapshot("AMZN", "1d"), daily)
    assert prov.filtered_rows == len(raw) - len(rth)


def test_early_close_hourly_bars_end_with_a_short_bar(shared_data: Path) -> None:
    rth = clean_candles(_stock(shared_data, "UPRO-1m-2020-01-02_2020-11-30.csv"), "1m", RTH).candles
    day = rth[_et(rth["ts"]).dt.strftime("%Y-%m-%d") == "2020-11-27"]
    start, end = RTH.buckets(day["ts"].to_numpy(np.int64), "1h")
    opens = _et(np.unique(start)).dt.strftime("%H:%M").tolist()
    assert opens == ["09:30", "10:30", "11:30", "12:30"]
    assert _et(end[-1:]).dt.strftime("%H:%M").tolist() == ["13:00"]  # 12:30-13:00: 30 minutes


def test_gap_reports_ignore_nights_weekends_and_holidays(shared_data: Path, tmp_path: Path) -> None:
    rth = clean_candles(_stock(shared_data, "AMZN-1m-alpaca-2020-12-31_2021-01-08.csv"), "1m", RTH).candles
    key = SeriesKey("alpaca", "AMZN", "1m")
    with MarketStore(tmp_path / "s.duckdb") as store:
        store.upsert_candles(key, rth, validate=False)
        naive = store.gaps(key)  # the 24x7 count sees every night, weekend and New Year's Day
        assert len(naive) >= 5
        sg = store.gaps(key, RTH)
        cov = store.coverage(lambda k: RTH)
    ts = rth["ts"].to_numpy(np.int64)
    idx = RTH.bar_index(ts, "1m")
    assert sum(g.missing_bars for g in sg) == int(idx[-1] - idx[0] + 1 - len(ts))
    assert int(cov["missing_bars"].iloc[0]) == sum(g.missing_bars for g in sg)
    # a removed RTH minute is a gap of exactly one bar; a whole night is none
    hole = np.delete(ts, 100)
    g = session_gaps(hole, "1m", RTH)
    extra = [x for x in g if x.start_ms == int(ts[100])]
    assert len(extra) == 1 and extra[0].missing_bars == 1 and extra[0].end_ms == int(ts[101])


def test_horizons_count_session_bars_and_never_span_a_night_unless_configured(shared_data: Path) -> None:
    rth = clean_candles(_stock(shared_data, "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv"), "1m", RTH).candles
    ts = rth["ts"].to_numpy(np.int64)
    hm = _et(ts).dt.strftime("%H:%M").to_numpy()
    ok = horizon_ok(ts, 5, "1m", RTH)
    assert not ok[hm == "15:57"].any() and ok[hm == "15:54"][:-1].all()  # 15:54 + 5 = 15:59 is same-day
    across = horizon_ok(ts, 5, "1m", RTH, cross_sessions=True)
    assert across[hm == "15:57"][:-1].all()  # counted in session bars: 15:57 + 5 = next day's 09:32
    assert int(ok.sum()) == 5 * (390 - 5) - 0
    # 24x7 keeps the old rule: h bars later must be h timeframes later
    assert not horizon_ok(ts, 5, "1m", AlwaysOpen())[hm == "15:57"].any()


def test_next_bars_follow_the_calendar_over_nights_weekends_and_holidays() -> None:
    def at(s: str) -> int:
        return int(pd.Timestamp(s, tz=ET).tz_convert("UTC").value // 1_000_000)

    nxt = _et(RTH.next_bars(at("2025-01-17 15:59"), 2, "1m")).dt.strftime("%Y-%m-%d %H:%M").tolist()
    assert nxt == ["2025-01-21 09:30", "2025-01-21 09:31"]  # Friday -> Tuesday (MLK day 01-20)
    assert _et(RTH.next_bars(at("2020-11-27 12:59"), 1, "1m")).dt.strftime("%m-%d %H:%M").tolist() == ["11-30 09:30"]
    assert RTH.next_open(at("2025-01-08 17:00")) == at("2025-01-10 09:30")  # 01-09: national day of mourning
    assert 97_000 < RTH.bars_per_year("1m") < 98_500 and AlwaysOpen().bars_per_year("1m") == 525_600


def test_market_model_and_stock_file_names() -> None:
    cfg = AppConfig(markets={"QQQ": MarketConfig(session="extended"), "BTC/USD": MarketConfig(exchange="alpaca")})
    amzn, qqq, btc, eth = (market_for(cfg, s) for s in ("AMZN", "QQQ", "BTC/USD", "ETH/USDT"))
    assert (amzn.exchange, amzn.kind, amzn.session, amzn.calendar.name) == ("alpaca", "stock", "rth", "XNYS")
    assert (qqq.session, qqq.calendar.mode) == ("extended", "extended")
    assert (btc.exchange, btc.kind, btc.always_open) == ("alpaca", "crypto", True)
    assert (eth.exchange, eth.always_open) == ("binanceus", True)
    with pytest.raises(ValueError, match="stock venues: alpaca"):
        market_for(cfg, "AMZN", "binanceus")
    assert cfg.symbol_choices() == ["BTC/USDT", "QQQ", "BTC/USD"]
    name = "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv"
    assert parse_series_name(name) == ("AMZN", "1m") and parse_series_exchange(name) == "alpaca"
    assert parse_series_name("UPRO-1m-2020-01-02_2020-11-30.csv") == ("UPRO", "1m")
    assert parse_series_name("BTCUSDT-1m-2023-03.csv") == (None, "1m")  # Binance's names stay as they were


def test_live_outcomes_mature_h_session_bars_later(shared_data: Path) -> None:
    """A decision at 15:58 ET with horizon 5 is scored 5 session bars later (15:59, 09:30 .. 09:33): at the
    next session's 09:33, not at 16:03 (no such bar) nor at the first bar after the night."""
    from core.outcomes import LiveOutcomes
    from core.types import Action, Decision, ExpertOutput, Thresholds

    rth = clean_candles(_stock(shared_data, "AMZN-1m-alpaca-2025-01-13_2025-01-17.csv"), "1m", RTH).candles
    hm = _et(rth["ts"]).dt.strftime("%m-%d %H:%M").tolist()
    i = hm.index("01-13 15:58")
    lo = LiveOutcomes("1m", 0.0, calendar=RTH)
    ts = rth["ts"].to_numpy(np.int64)
    close = rth["close"].to_numpy()
    out = ExpertOutput("cnn", "v", "AMZN", int(ts[i]), 5, (0.2, 0.3, 0.5), 0.0, 0.5, 1.0)
    lo.on_close(int(ts[i]), float(close[i]))
    lo.add(Decision("d", int(ts[i]), "AMZN", Action.HOLD, (0.2, 0.3, 0.5), 0.0, {"cnn": 1.0}, Thresholds(), 0.0,
                    "", (out,)))
    matured_at = None
    for j in range(i + 1, i + 10):
        if lo.on_close(int(ts[j]), float(close[j])):
            matured_at = hm[j]
            break
    assert matured_at == "01-14 09:33"
    m = lo.metrics()[("cnn", 5)]
    assert m.n == 1
