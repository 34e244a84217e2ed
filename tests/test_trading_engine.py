"""The whole product path of a testnet account, end to end: ``compose.build_engine`` (execution.broker ccxt,
sandbox) -> Engine -> Orchestrator -> Executor -> CcxtBroker -> the fake Binance spot server on 127.0.0.1,
fed by a live-like stream of real BTC/USDT minutes (each minute's open, low and high as in-progress
updates, then the closed candle; the fake's market price follows every update).

Checked: the engine subscribes to the in-progress updates and the daily-loss kill switch acts on one of
them (not at the close); the entry's stop-loss / take-profit rest on the exchange as an OCO list and are
cancelled before the kill-switch sale; the alerts (entry, exit, kill switch, stream lost / restored) reach
a local webhook server, errors only their own channel; and after the run the ledger equals the
exchange's own view (fills, fees, balances).

The policy is the real decision path with thresholds that always BUY (buy 0, sell 1): the entry comes
at the first live bar, the fall that follows trips the kill switch. The minute's real intrabar order is
not recorded; open -> low -> high -> close is the path replayed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_binance import FakeServer, local_binance
from helpers import binanceus_minutes, wait_for
from test_alerts import Hook

import compose
from core.alerts import ERROR_EVENTS
from core.config import Secrets, load_config, load_models
from core.data.source_base import SourceStatus
from core.data.store import MarketStore
from core.execution.ledger import Ledger
from core.types import SeriesKey

KEY = SeriesKey("binance", "BTC/USDT", "1m")
HISTORY = 3000  # minutes in the store before the stream starts (the features' warm-up)
LIVE = 60  # minutes streamed
DAILY_LOSS = 0.004


class MinuteStream:
    """Real minutes as a live stream. Every update waits until the engine has handled the previous one,
    so the exchange's price is the one the engine saw when it sends an order (as live, on loopback).
    ``lost``: minutes during which the stream reports itself disconnected (their candles then arrive
    as a reconnect's backfill would)."""

    name = "stream"
    persist = True

    def __init__(self, df: pd.DataFrame, fake, idle, lost: range) -> None:
        self.df, self.fake, self.idle, self.lost = df, fake, idle, lost
        self._status = SourceStatus(self.name)

    def status(self) -> SourceStatus:
        return self._status

    async def _settle(self) -> None:
        while not self.idle():
            await asyncio.sleep(0.002)

    async def run(self, emit, stop: asyncio.Event) -> None:
        for i, r in enumerate(self.df.itertuples()):
            if stop.is_set():
                break
            down = i in self.lost
            self._status = SourceStatus(self.name, connected=not down, last_message_ms=int(time.time() * 1000),
                                        error="connection lost (test)" if down else None)
            hi = lo = float(r.open)
            for p in () if down else (r.open, r.low, r.high):
                hi, lo = max(hi, p), min(lo, p)
                self.fake.set_price(float(p))
                emit(KEY, pd.DataFrame({"ts": [int(r.ts)], "open": [r.open], "high": [hi], "low": [lo],
                                        "close": [p], "volume": [0.0]}), False)
                await self._settle()
            self.fake.set_price(float(r.close))
            emit(KEY, pd.DataFrame({"ts": [int(r.ts)], "open": [r.open], "high": [r.high], "low": [r.low],
                                    "close": [r.close], "volume": [r.volume]}), True)
            await self._settle()
        self._status = replace(self._status, connected=False)


def segment(df: pd.DataFrame) -> int:
    """A live start whose next hour falls far enough (from the first close) to trip the kill switch
    of a half-equity long, within one UTC day, before the take-profit level."""
    c, lo, hi, ts = (df[k].to_numpy() for k in ("close", "low", "high", "ts"))
    for s in range(HISTORY, len(df) - LIVE):
        win = slice(s + 1, s + LIVE)
        if ts[s] // 86_400_000 != ts[s + LIVE] // 86_400_000:
            continue
        first = np.argmax(lo[win] < c[s] * (1 - 3 * DAILY_LOSS)) if (lo[win] < c[s] * (1 - 3 * DAILY_LOSS)).any() else -1
        if 5 < first < LIVE - 15 and hi[s + 1:s + 1 + first].max() < c[s] * 1.01:
            return s
    raise AssertionError("no falling hour in the sample")


@pytest.fixture()
def server():
    s = FakeServer()
    yield s
    s.close()


def test_testnet_engine_end_to_end(shared_data: Path, server, tmp_path, monkeypatch):
    df = binanceus_minutes(shared_data, skip=9_999, nrows=12_000)
    s = segment(df)
    hist, live = df.iloc[s - HISTORY + 1:s], df.iloc[s:s + LIVE]
    db = tmp_path / "moe.duckdb"
    st = MarketStore(db)
    st.upsert_candles(KEY, hist[["ts", "open", "high", "low", "close", "volume"]].reset_index(drop=True))
    st.close()
    fake = server.fake
    fake.reset(price=float(live["close"].iloc[0]))
    hooks, errs = Hook(), Hook()
    import ccxt

    real_binance = ccxt.binance
    monkeypatch.setattr(ccxt, "binance", lambda conf: local_binance(server.base, timeout_ms=2000, cls=real_binance))
    cfg = load_config()
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"db_path": str(db), "exchange": "binance", "symbols": ["BTC/USDT"]}),
        "training": cfg.training.model_copy(update={"models_dir": str(tmp_path / "models"),
                                                    "runs_dir": str(tmp_path / "runs")}),
        "orchestrator": cfg.orchestrator.model_copy(update={"buy_threshold": 0.0, "sell_threshold": 1.0}),
        "execution": cfg.execution.model_copy(update={
            "broker": "ccxt", "sandbox": True, "fill_at": "last_price", "allow_untrained": True,
            "max_bar_age_s": 0.0, "reconcile_every_bars": 10}),
        "risk": cfg.risk.model_copy(update={"fraction": 0.5, "max_daily_loss_pct": DAILY_LOSS,
                                            "stop_loss_pct": 0.02, "take_profit_pct": 0.04}),
        "alerts": cfg.alerts.model_copy(update={"webhook_events": ["entry", "exit", "kill_switch", "stream_lost",
                                                                   "stream_restored", "reconcile", "error"],
                                                "backoff_s": 0.05})})
    secrets = Secrets(exchange_api_key="test-key-not-real", exchange_secret="test-secret-not-real",
                      alert_webhook_url=hooks.url + "/main", alert_error_webhook_url=errs.url + "/errors")
    eng = compose.build_engine(cfg, load_models(), training=False, secrets=secrets)
    assert (eng.mode, eng.broker_name) == ("testnet", "ccxt")
    stream = MinuteStream(live, fake, lambda: eng._q.unfinished_tasks == 0, lost=range(40, 42))
    import core.data.sources

    monkeypatch.setattr(core.data.sources, "source_for", lambda *a, **k: stream)
    try:
        eng.start()
        last = int(live["ts"].iloc[-1])
        wait_for(lambda: eng._executor is not None and eng._executor.snapshot().ts == last
                 and eng._q.unfinished_tasks == 0, 120, "the streamed hour")
        snap = eng.snapshot()
        assert snap.trading.mode == "testnet" and snap.trading.protection == "exchange"
        assert snap.kill_switch.active and not snap.trading.halted  # the daily loss, not a difference:
        assert snap.trading.reconcile_ok is True  # reconciled every 10 bars, resting legs included
    finally:
        eng.stop()
    # the entry came at the first live bar; its OCO legs rested on the exchange, cancelled before the sale
    led = Ledger(db, account="testnet:BTC/USDT", symbol="BTC/USDT")
    try:
        fills = led.fills()
        assert list(fills["reason"][:2]) == ["signal", "kill_switch"] and fills["ts"].iloc[0] >= int(live["ts"].iloc[0])
        legs = [o for o in fake.orders.values() if o["orderListId"] >= 0]
        assert fake.list_seq == 1 and {o["status"] for o in legs} == {"CANCELED"}
        # the kill switch sold at an in-progress update: the exchange's price then was that minute's low
        # (the first intrabar price under the loss limit), not its close
        kill = fills[fills["reason"] == "kill_switch"].iloc[0]
        it = led.intents().set_index("client_order_id")
        minute = live[live["ts"] == int(it.loc[kill["client_order_id"], "bar_ts"])].iloc[0]
        assert kill["price"] == pytest.approx(float(minute["low"])) and kill["price"] != pytest.approx(float(minute["close"]))
        # ledger == exchange: every fill, its fee, and the balances
        trades = {str(t["orderId"]): t for t in fake.trades}
        assert sorted(fills["order_id"]) == sorted(trades) and fake.duplicates() == 0
        for f in fills.itertuples():
            assert f.amount == pytest.approx(float(trades[f.order_id]["qty"]), abs=1e-12)
            assert f.fee == pytest.approx(float(trades[f.order_id]["commission"]), abs=1e-8)
        assert led.cash == pytest.approx(fake.balances["USDT"], abs=1e-6)
        assert float(led.restore()[1]) == pytest.approx(fake.balances["BTC"], abs=1e-12)
        assert led.unresolved_intents() == []
    finally:
        led.close()
    # the alerts reached the webhook; errors (if any) only the error channel
    wait_for(lambda: {"entry", "kill_switch", "stream_lost", "stream_restored"} <= {b["event"] for _, _, b in hooks.got},
             5, "the trading alerts at the webhook")
    got = {b["event"] for _, _, b in hooks.got}
    assert not got & ERROR_EVENTS and all(b["event"] in ERROR_EVENTS for _, _, b in errs.got)
    ks = next(b for _, _, b in hooks.got if b["event"] == "kill_switch")
    assert ks["details"]["intrabar"] is True and ks["details"]["reason"] == "daily_loss"
    assert any(b["event"] == "exit" and b["details"]["reason"] == "kill_switch" for _, _, b in hooks.got)
    hooks.close()
    errs.close()
