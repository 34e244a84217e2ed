"""Wiring of the traded account: execution.broker picks the broker, the --live flag exists, real money
needs all three switches (each missing one named), execution.live without --live never says "live",
and the engine, /api/status and the banner report the TRUE mode. Engines are only constructed here
(never started): nothing reaches a network."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import compose
import main_dashboard
from core.config import AppConfig, Secrets, load_config, load_models
from core.execution.ccxt_broker import CcxtBroker, LiveTradingRefused
from core.execution.modes import trading_mode
from web.api import status_json
from web.app import mode_banner

KEYS = Secrets(exchange_api_key="test-key-not-real", exchange_secret="test-secret-not-real")
NONE = Secrets()


def cfg_with(tmp: Path, **execution) -> AppConfig:
    cfg = load_config()
    return cfg.model_copy(update={
        "execution": cfg.execution.model_copy(update=execution),
        "data": cfg.data.model_copy(update={"db_path": str(tmp / "moe.duckdb"), "exchange": "binance"}),
        "training": cfg.training.model_copy(update={"models_dir": str(tmp / "models"), "runs_dir": str(tmp / "runs")}),
    })


def test_live_flag_refused_naming_each_missing_switch():
    ex = load_config().execution
    cases = [  # (execution overrides, secrets, what the refusal must name)
        ({"broker": "ccxt", "live": False}, KEYS, ["execution.live is not true"]),
        ({"broker": "ccxt", "live": True}, NONE, ["MOE_EXCHANGE_API_KEY"]),
        ({"broker": "ccxt", "live": False}, NONE, ["execution.live is not true", "MOE_EXCHANGE_API_KEY"]),
        ({"broker": "paper", "live": True}, KEYS, ["execution.broker is paper"]),
        ({"broker": "paper_exchange", "live": True}, KEYS, ["execution.broker is paper_exchange"]),
        ({"broker": "paper", "live": False}, NONE, ["execution.broker is paper", "execution.live is not true",
                                                    "MOE_EXCHANGE_API_KEY"]),
    ]
    for over, secrets, named in cases:
        with pytest.raises(LiveTradingRefused) as e:
            trading_mode(ex.model_copy(update=over), live_flag=True, secrets=secrets)
        msg = str(e.value)
        assert all(n in msg for n in named), (over, msg)
        assert "test-key" not in msg and "\n" not in msg
    live = trading_mode(ex.model_copy(update={"broker": "ccxt", "live": True}), live_flag=True, secrets=KEYS)
    assert (live.mode, live.broker, live.label) == ("live", "ccxt", "LIVE")
    with pytest.raises(LiveTradingRefused, match="replay"):
        trading_mode(ex, live_flag=True, secrets=KEYS, replay=True)


def test_config_live_without_flag_never_says_live():
    ex = load_config().execution.model_copy(update={"live": True})
    paper = trading_mode(ex, live_flag=False, secrets=KEYS)
    assert (paper.mode, paper.label) == ("paper", "PAPER")
    px = trading_mode(ex.model_copy(update={"broker": "paper_exchange"}), live_flag=False, secrets=NONE)
    assert (px.mode, px.broker, px.label) == ("paper", "paper_exchange", "PAPER")
    with pytest.raises(LiveTradingRefused, match="--live flag was not given"):
        trading_mode(ex.model_copy(update={"broker": "ccxt"}), live_flag=False, secrets=KEYS)
    t = trading_mode(ex.model_copy(update={"broker": "ccxt", "live": False, "sandbox": True}), live_flag=False,
                     secrets=KEYS)
    assert (t.mode, t.broker, t.label) == ("testnet", "ccxt", "TESTNET")


def test_main_dashboard_live_flag_refused_before_any_network(tmp_path, capsys):
    raw = yaml.safe_load(Path("config.yaml").read_text())
    raw["execution"]["live"] = True
    raw["execution"]["broker"] = "ccxt"
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert main_dashboard.build_parser().parse_args(["--live"]).live is True
    import os

    env = {k: os.environ.pop(k) for k in ("MOE_EXCHANGE_API_KEY", "MOE_EXCHANGE_SECRET") if k in os.environ}
    try:
        assert main_dashboard.main(["--config", str(p), "--live", "--db", str(tmp_path / "x.duckdb")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: live trading refused") and "MOE_EXCHANGE_API_KEY" in err[0]
        assert main_dashboard.main(["--config", str(p), "--db", str(tmp_path / "x.duckdb")]) == 2
        assert "the --live flag was not given" in capsys.readouterr().err
    finally:
        os.environ.update(env)


def test_engine_status_and_banner_report_the_true_mode(tmp_path):
    models = load_models()
    # execution.live: true with the paper broker and no --live: a PAPER engine, and it says so
    eng = compose.build_engine(cfg_with(tmp_path, live=True, broker="paper"), models, training=False,
                               secrets=KEYS)
    try:
        st = status_json(eng.snapshot())
        assert eng.mode == "paper" and st["mode"] == "paper" and st["broker"] == "paper"
        assert st["trading"]["mode"] == "paper"
        b = mode_banner(eng.snapshot())
        assert b.children.startswith("PAPER") and "mode-paper" in b.className
    finally:
        eng.stop()
        eng.store.close()
    # ccxt + sandbox + testnet keys: the engine trades the exchange's testnet through CcxtBroker
    eng = compose.build_engine(cfg_with(tmp_path, broker="ccxt", sandbox=True), models, training=False, secrets=KEYS)
    try:
        assert (eng.mode, eng.broker_name) == ("testnet", "ccxt")
        broker = eng.trading.make_broker(eng.symbol)
        assert isinstance(broker, CcxtBroker) and broker.mode == "sandbox"
        assert "testnet" in broker.ex.urls["api"]["private"]  # sandbox urls, never the live host
        st = status_json(eng.snapshot())
        assert (st["mode"], st["broker"]) == ("testnet", "ccxt")
        b = mode_banner(eng.snapshot())
        assert b.children.startswith("TESTNET") and "mode-testnet" in b.className
    finally:
        eng.stop()
        eng.store.close()
    # all three switches: LIVE (constructed only, never started)
    eng = compose.build_engine(cfg_with(tmp_path, broker="ccxt", live=True), models, training=False,
                               secrets=KEYS, live_flag=True)
    try:
        assert status_json(eng.snapshot())["mode"] == "live"
        b = mode_banner(eng.snapshot())
        assert b.children.startswith("LIVE") and "mode-live" in b.className
    finally:
        eng.stop()
        eng.store.close()


def test_exchange_without_testnet_is_refused(tmp_path):
    cfg = cfg_with(tmp_path, broker="ccxt", sandbox=True)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"exchange": "kraken"})})
    with pytest.raises(LiveTradingRefused, match="kraken has no testnet"):
        compose.trading(cfg, "BTC/USDT", secrets=KEYS)
