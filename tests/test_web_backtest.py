"""Backtest page logic: the background job runs the real backtester (core.backtest.runner.run_backtest)
on shared BTC/USDT data imported into a temporary store, reports progress, saves a report the page then
lists and compares; an event-mode job reports what a fast-mode job does."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import wait_for, web_config

from compose import backtest_components
from core.backtest.runner import RunRequest
from core.data.files import load_file
from core.data.store import MarketStore
from core.types import SeriesKey, Thresholds
from web import figures
from web.app import WebContext
from web.pages import backtest


@pytest.fixture(scope="module")
def ctx(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bt")
    cfg, models = web_config(tmp)
    store = MarketStore(tmp / "bt.duckdb")
    df = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    store.upsert_candles(SeriesKey(cfg.data.exchange, "BTC/USDT", "1m"), df)
    yield WebContext(engine=None, cfg=cfg, models_cfg=models, store=store,
                     backtest_components=backtest_components), df
    store.close()


def test_job_runs_backtester_and_report_is_listed(ctx) -> None:
    wctx, df = ctx
    jobs = backtest.BacktestJobs(backtest.default_runner(wctx))
    start = int(df["ts"].iloc[0])
    spec = RunRequest(symbol="BTC/USDT", timeframe="1m", start_ms=start, end_ms=start + 2 * 86_400_000,
                      experts=("cnn",), thresholds=Thresholds(buy=0.55, sell=0.55, min_confidence=0.0),
                      source="dashboard")
    job = jobs.submit(spec)
    with pytest.raises(RuntimeError, match="already running"):
        jobs.submit(spec)
    wait_for(lambda: job.done, 240, "the backtest job")
    assert job.error is None, job.error
    assert job.progress == 1.0 and job.report and job.report.endswith(".json")
    reps = backtest.list_reports(wctx.cfg.resolve(wctx.cfg.backtest.reports_dir))
    assert len(reps) == 1 and reps["path"].iloc[0] == job.report
    assert reps["bars"].iloc[0] == 2 * 1440
    rdir = wctx.cfg.resolve(wctx.cfg.backtest.reports_dir)
    eq = backtest.report_equity(job.report, rdir)
    assert len(eq) == 2 * 1440 and eq["equity"].iloc[0] == pytest.approx(wctx.cfg.execution.initial_cash, rel=0.01)
    fig = figures.compare_figure({"a": eq, "b": eq})
    assert len(fig.data) == 2 and fig.data[0].y[0] == pytest.approx(1.0)
    # the run is also recorded in the store's backtest_runs table (as main_backtest.py run does)
    runs = wctx.store.query_df("SELECT json_path FROM backtest_runs")
    assert list(runs["json_path"]) == [job.report]
    # the compare dropdown's value comes from the browser: only .json files inside reports_dir are read
    import shutil

    outside = Path(rdir).parent / "elsewhere" / "copy.json"
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(job.report, outside)  # a real, report-shaped file, but outside the reports folder
    for bad in (str(outside), f"{rdir}/../elsewhere/copy.json", "../elsewhere/copy.json", "/dev/zero",
                "/etc/passwd", "", "x\x00.json"):
        with pytest.raises(ValueError):
            backtest.report_equity(bad, rdir)
    assert len(backtest.report_equity(Path(job.report).name, rdir)) == 2 * 1440  # relative inside: fine


def test_job_failure_is_reported_not_raised(ctx) -> None:
    wctx, df = ctx
    jobs = backtest.BacktestJobs(backtest.default_runner(wctx))
    spec = RunRequest(symbol="BTC/USDT", timeframe="1m", start_ms=0, end_ms=1000, experts=("cnn",),
                      thresholds=Thresholds())
    job = jobs.submit(spec)
    wait_for(lambda: job.done, 30, "the failing job")
    assert job.message == "failed" and "no candles" in job.error
    assert isinstance(backtest.list_reports(wctx.cfg.resolve("does-not-exist")), pd.DataFrame)


def test_event_mode_job_reports_what_the_fast_mode_job_does(shared_data, tmp_path) -> None:
    """The page's runner in both modes over 500 minutes of the March-2023 banking crisis (a store of
    its own): same decisions, fills, equity and metrics; the report says which mode ran."""
    cfg, models = web_config(tmp_path)
    assert cfg.backtest.mode == "fast"  # the page's default comes from config; event is picked explicitly
    df = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    day = int(df["ts"].iloc[14_400])  # 2023-03-11 00:00 UTC: a day boundary, so no bar is dropped
    part = df[(df["ts"] >= day - 86_400_000) & (df["ts"] < day + 86_400_000)]
    with MarketStore(tmp_path / "modes.duckdb") as store:
        store.upsert_candles(SeriesKey(cfg.data.exchange, "BTC/USDT", "1m"), part)
        wctx = WebContext(engine=None, cfg=cfg, models_cfg=models, store=store,
                          backtest_components=backtest_components)
        jobs = backtest.BacktestJobs(backtest.default_runner(wctx))
        # untrained experts mixed with the base rate sit far from fixed thresholds: a first fast run's
        # threshold preview (core/backtest/thresholds.py, a grid over its own probabilities) picks a pair
        # that gives both BUYs and SELLs, so the modes are compared on trades
        base = RunRequest(symbol="BTC/USDT", timeframe="1m", start_ms=day, end_ms=day + 500 * 60_000,
                          experts=("cnn", "dqn"), thresholds=Thresholds(buy=0.30, sell=0.35), source="dashboard")
        probe = jobs.submit(replace(base, mode="fast"))
        wait_for(lambda: probe.done, 300, "the probe job")
        pv = json.loads(Path(probe.report).read_text())["threshold_preview"]
        n_buy, n_sell = np.asarray(pv["n_buy"]), np.asarray(pv["n_sell"])
        both = np.argwhere((n_buy >= 5) & (n_sell >= 5))
        assert len(both), f"no preview pair gives both BUYs and SELLs: {pv}"
        i, j = both[len(both) // 2]
        base = replace(base, thresholds=Thresholds(buy=pv["buy"][i], sell=pv["sell"][j]))
        reps = {}
        for mode in ("fast", "event"):
            job = jobs.submit(replace(base, mode=mode))
            wait_for(lambda job=job: job.done, 300, f"the {mode}-mode job")
            assert job.error is None, job.error
            reps[mode] = json.loads(Path(job.report).read_text())
        fast, event = reps["fast"], reps["event"]
        dec = {m: store.query_df("SELECT ts, action, target_position FROM decisions WHERE run_id = ? ORDER BY ts",
                                 [reps[m]["run_id"]]) for m in reps}
    assert (fast["spec"]["mode"], event["spec"]["mode"]) == ("fast", "event")
    assert fast["bars"] == event["bars"] == 500
    assert len(dec["fast"]) == fast["metrics"]["decisions"] > 300
    pd.testing.assert_frame_equal(dec["fast"], dec["event"])
    assert fast["metrics"]["buy_decisions"] > 0 and fast["metrics"]["sell_decisions"] > 0
    assert len(fast["fills"]) >= 2
    pd.testing.assert_frame_equal(pd.DataFrame(fast["fills"]), pd.DataFrame(event["fills"]), check_exact=False,
                                  rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast["series"]["equity"], event["series"]["equity"], rtol=0, atol=1e-9)
    for name in fast["series"]["weights"]:
        np.testing.assert_allclose(fast["series"]["weights"][name], event["series"]["weights"][name], atol=1e-6)
    p_up = [np.array(r["series"]["p_up"], dtype=np.float64) for r in (fast, event)]
    np.testing.assert_allclose(*p_up, atol=1e-6)  # None (no decision) -> NaN in both
    fm, em = dict(fast["metrics"]), dict(event["metrics"])
    fm.pop("elapsed_s"), em.pop("elapsed_s")
    assert fm.keys() == em.keys()
    for k in fm:  # calibration figures from float32 probabilities: 1e-6, the rest exactly as the engine's test
        assert (fm[k] is None and em[k] is None) or fm[k] == pytest.approx(em[k], rel=0, abs=1e-6), k
