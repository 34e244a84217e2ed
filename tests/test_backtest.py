"""Backtest CLI (`run`, `run --signals`, `report`), the backtest_runs row, and the Kronos forecast cache,
all on real BTC/USDT 1m candles from ../shared/data imported into a temporary DuckDB."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_kronos_dir

from compose import backtest_components
from core.backtest import cli
from core.backtest.signals import load_signals
from core.data.files import load_file
from core.data.store import MarketStore
from core.types import SeriesKey, Thresholds

torch.set_num_threads(1)
KEY = SeriesKey("binanceus", "BTC/USDT", "1m")


@pytest.fixture(scope="module")
def btc(shared_data) -> pd.DataFrame:
    return load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")


def make_db(path: Path, candles: pd.DataFrame) -> Path:
    with MarketStore(path) as s:
        s.upsert_candles(KEY, candles)
    return path


def run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=None)
    p.add_argument("--models", default=None)
    sub = p.add_subparsers(dest="command", required=True)
    cli.register(sub, backtest_components)
    args = p.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------- external signals


def test_signals_csv_matches_hand_computation(btc, tmp_path, capsys):
    bars = btc.iloc[:30].reset_index(drop=True)
    db = make_db(tmp_path / "s.duckdb", bars)
    ts = bars["ts"].to_numpy()
    iso = pd.to_datetime(ts, unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ")
    sig = tmp_path / "signals.csv"
    sig.write_text(f"timestamp,target\n{iso[3]},0.5\n{iso[10]},0\n")
    assert run_cli(["run", "--symbol", "BTC/USDT", "--db", str(db), "--signals", str(sig),
                    "--fees-bps", "10", "--slippage-bps", "2", "--reports-dir", str(tmp_path)]) == 0
    rep = json.loads(next(tmp_path.glob("backtest_*.json")).read_text())

    # by hand: the decision at bar 3's close fills at bar 4's open, the flatten at bar 11's open
    fee, slip, cash0 = 10 / 1e4, 2 / 1e4, 10_000.0
    o4, o11 = bars["open"][4], bars["open"][11]
    qty = 0.5 * cash0 / o4
    px_buy, px_sell = o4 * (1 + slip), o11 * (1 - slip)
    cash1 = cash0 - qty * px_buy - qty * px_buy * fee
    cash2 = cash1 + qty * px_sell - qty * px_sell * fee
    fills = rep["fills"]
    assert [f["side"] for f in fills] == ["buy", "sell"]
    assert fills[0]["ts"] == ts[4] and fills[1]["ts"] == ts[11]
    assert fills[0]["price"] == pytest.approx(px_buy, rel=1e-12)
    assert fills[0]["amount"] == pytest.approx(qty, rel=1e-12)
    assert fills[1]["fee"] == pytest.approx(qty * px_sell * fee, rel=1e-12)
    eq = rep["series"]["equity"]
    assert eq[7] == pytest.approx(cash1 + qty * bars["close"][7], rel=1e-12)
    assert rep["metrics"]["final_equity"] == pytest.approx(cash2, rel=1e-12)
    assert eq[-1] == pytest.approx(cash2, rel=1e-12)
    with MarketStore(db, read_only=True) as s:
        row = s.query_one("SELECT kind, bars FROM backtest_runs WHERE run_id = ?", [rep["run_id"]])
    assert row == ("signals", 30)


def test_signals_csv_bad_rows_are_named(btc, tmp_path):
    """Hand-written bad inputs: a timestamp that is not a bar, a target outside [-1, 1]."""
    bars = btc.iloc[:30].reset_index(drop=True)
    sig = tmp_path / "bad.csv"
    sig.write_text("timestamp,target\n2023-03-01T00:03:30Z,0.5\n")
    with pytest.raises(ValueError, match="row 2: timestamp .* is not a bar"):
        load_signals(sig, bars)
    sig.write_text("ts,position\n1677628980000,2.0\n")
    with pytest.raises(ValueError, match=r"row 2: target .* \[-1, 1\]"):
        load_signals(sig, bars)


# ---------------------------------------------------------------- experts through the CLI


def test_cli_run_writes_reports_and_run_row_and_report_reopens(btc, tmp_path, capsys):
    db = make_db(tmp_path / "r.duckdb", btc.iloc[:400])
    out = tmp_path / "reports"
    assert run_cli(["run", "--symbol", "BTC/USDT", "--timeframe", "1m", "--exchange", "binanceus",
                    "--experts", "cnn", "dqn", "--buy-threshold", "0.34", "--sell-threshold", "0.34",
                    "--mode", "fast", "--db", str(db), "--reports-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "untrained experts: cnn, dqn" in printed
    js = list(out.glob("backtest_*.json"))
    assert len(js) == 1
    rep = json.loads(js[0].read_text())
    run_id = rep["run_id"]
    html = out / f"backtest_{run_id}.html"
    text = html.read_text()
    assert "untrained" in text and "Plotly" in text and "Gate weights over time" in text
    assert rep["experts"]["cnn"]["trained"] is False and rep["bars"] == 400
    from core.config import load_models
    from core.features import FeatureBuilder

    warmup = FeatureBuilder(load_models().features, "1m").min_history - 1
    assert rep["metrics"]["decisions"] == 400 - warmup
    m = rep["metrics"]
    assert m["buy_decisions"] + m["sell_decisions"] + m["hold_decisions"] == m["decisions"]
    with MarketStore(db, read_only=True) as s:
        runs = s.query_df("SELECT * FROM backtest_runs")
        n_dec = s.query_one("SELECT count(*) FROM decisions WHERE run_id = ?", [run_id])[0]
    assert runs["run_id"].tolist() == [run_id]
    assert json.loads(runs["metrics"][0])["final_equity"] == pytest.approx(rep["metrics"]["final_equity"])
    assert n_dec == rep["metrics"]["decisions"]

    html.unlink()
    assert run_cli(["report", run_id, "--db", str(db), "--reports-dir", str(out)]) == 0
    again = capsys.readouterr().out
    assert html.exists() and f"backtest {run_id}" in again and "final_equity" in again


def test_cli_without_checkpoints_refuses_implicit_untrained(btc, tmp_path):
    db = make_db(tmp_path / "n.duckdb", btc.iloc[:200])
    with pytest.raises(ValueError, match="no expert to run"):
        run_cli(["run", "--symbol", "BTC/USDT", "--db", str(db), "--reports-dir", str(tmp_path)])


# ---------------------------------------------------------------- Kronos forecast cache


def test_kronos_forecasts_are_cached_and_reused(btc, tmp_path):
    try:
        from NN.experts.kronos.expert import KronosExpert  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"NN.experts.kronos.expert is missing ({exc}); cannot test the Kronos cache")
    from core.backtest.engine import Backtester, spec_from_config
    from core.config import ExpertConfig, load_config, load_models

    cfg = load_config()
    models = load_models()
    kdir = tiny_kronos_dir(tmp_path)
    kron = ExpertConfig.model_validate({"class": "NN.experts.kronos.expert.KronosExpert", "device": "cpu",
                                        "horizon": 5, "params": {"model": str(kdir), "lookback": 32,
                                                                 "samples": 4, "calibrated": False}})
    feats = models.features.model_copy(update={"timeframes": ["1m", "5m"], "window": 16, "norm_window": 100})
    models = models.model_copy(update={"features": feats, "experts": {**models.experts, "kronos": kron}})
    candles = btc.iloc[:240]
    store = MarketStore(tmp_path / "k.duckdb")

    def run(mode: str):
        comps = backtest_components(models, "1m", ["cnn", "kronos"], store=store)
        spec = spec_from_config(cfg, models, exchange="binanceus", symbol="BTC/USDT", timeframe="1m",
                                thresholds=Thresholds(0.34, 0.34), mode=mode)
        res = Backtester(comps, spec, cfg.execution, cfg.risk, store=store).run(candles)
        return res, comps.cache

    first, c1 = run("fast")
    due = int(((first.candles["ts"][first.decided] // 60_000) % cfg.backtest.kronos_every_bars == 0).sum())
    assert due > 5 and (c1.misses, c1.hits) == (due, 0)
    second, c2 = run("fast")
    assert (c2.misses, c2.hits) == (0, due)  # the rerun sampled nothing
    np.testing.assert_array_equal(first.codes, second.codes)
    np.testing.assert_array_equal(first.equity, second.equity)
    k = first.names.index("kronos")
    np.testing.assert_array_equal(first.fused, second.fused)
    assert first.weights[first.decided][:, k].max() > 0  # Kronos took part in the decisions
    event, c3 = run("event")  # the orchestrator reads the same cache, bar by bar
    assert c3.misses == 0 and c3.hits == due
    np.testing.assert_array_equal(first.codes, event.codes)
    np.testing.assert_allclose(first.equity, event.equity, rtol=0, atol=1e-9)
    # Kronos' bands go through adaptive conformal inference (core/conformal.BandTracker) in both modes
    # with the same result: the audit trail holds the same scaled bands and factors
    q = "SELECT ts, extras FROM predictions WHERE run_id = ? AND expert = 'kronos' ORDER BY ts"
    fa, ev = (store.query_df(q, [r.run_id]) for r in (first, event))
    assert len(fa) == len(ev) > 0
    fx, ex_ = ([json.loads(x) for x in df.extras] for df in (fa, ev))
    assert all("aci_factor" in x and x["q10"] <= x["q50"] <= x["q90"] for x in fx)
    assert any(x["aci_factor"] != 1.0 for x in fx), "no matured forecast ever moved the band factor"
    for a, b in zip(fx, ex_, strict=True):
        assert a["aci_factor"] == pytest.approx(b["aci_factor"], abs=1e-12)
        assert a["q10"] == pytest.approx(b["q10"], abs=1e-12) and a["q90"] == pytest.approx(b["q90"], abs=1e-12)
    store.close()


def test_report_of_unknown_run_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="backtest report not found: .*backtest_nope.json"):
        run_cli(["report", "nope", "--db", str(tmp_path / "none.duckdb"), "--reports-dir", str(tmp_path)])
