"""Backtest page logic: the background job runs the real backtester (core/backtest) on shared BTC/USDT
data imported into a temporary store, reports progress, saves a report the page then lists and
compares."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import wait_for, web_config

from compose import backtest_components
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
    spec = {"symbol": "BTC/USDT", "timeframe": "1m", "start_ms": start, "end_ms": start + 2 * 86_400_000,
            "experts": ["cnn"], "thresholds": Thresholds(buy=0.55, sell=0.55, min_confidence=0.0)}
    job = jobs.submit(spec)
    with pytest.raises(RuntimeError, match="already running"):
        jobs.submit(spec)
    wait_for(lambda: job.done, 240, "the backtest job")
    assert job.error is None, job.error
    assert job.progress == 1.0 and job.report and job.report.endswith(".json")
    reps = backtest.list_reports(wctx.cfg.resolve(wctx.cfg.backtest.reports_dir))
    assert len(reps) == 1 and reps["path"].iloc[0] == job.report
    assert reps["bars"].iloc[0] == 2 * 1440
    eq = backtest.report_equity(job.report)
    assert len(eq) == 2 * 1440 and eq["equity"].iloc[0] == pytest.approx(wctx.cfg.execution.initial_cash, rel=0.01)
    fig = figures.compare_figure({"a": eq, "b": eq})
    assert len(fig.data) == 2 and fig.data[0].y[0] == pytest.approx(1.0)
    # the run is also recorded in the store's backtest_runs table (as main_backtest.py run does)
    runs = wctx.store.query_df("SELECT json_path FROM backtest_runs")
    assert list(runs["json_path"]) == [job.report]


def test_job_failure_is_reported_not_raised(ctx) -> None:
    wctx, df = ctx
    jobs = backtest.BacktestJobs(backtest.default_runner(wctx))
    spec = {"symbol": "BTC/USDT", "timeframe": "1m", "start_ms": 0, "end_ms": 1000, "experts": ["cnn"],
            "thresholds": Thresholds()}
    job = jobs.submit(spec)
    wait_for(lambda: job.done, 30, "the failing job")
    assert job.message == "failed" and "no candles" in job.error
    assert isinstance(backtest.list_reports(wctx.cfg.resolve("does-not-exist")), pd.DataFrame)
