"""Robust fusion (issue 17) on real data: the base-rate expert and fixed-share weights keep the fused
output within reach of climatology on a sister market, the regret bound holds on real outputs, OOD
scores rise off the training market and cut the gate weight, adaptive conformal bands keep their
coverage through the March 2023 banking-crisis move, the threshold preview counts what the decision
rule does, and `evaluate --markets` reports per market.

Checkpoints: tiny CNN + DQN + gate trained once on 4 days of real BTC/USDT minutes (the same slice
and 5 bps dead zone as tests/test_training.py), evaluated on BTC/USD of the same exchange and dates."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import main_backtest
from core.backtest.thresholds import forward_log_returns, preview_json, threshold_preview
from core.config import load_config, load_models
from core.conformal import conformal_bands
from core.data.files import load_file
from core.data.store import MarketStore
from core.fusion import RollingClimatology, ood_discount
from core.labels import make_labels
from core.orchestrator import GateRunner, decide
from core.types import SeriesKey, Thresholds
from NN.assembly import load_experts, load_gate
from NN.training.checkpoints import CheckpointRegistry
from NN.training.prepared import load_candles, prepare
from NN.training.trainer import run_evaluation
from web.figures import threshold_heatmap

torch.set_num_threads(1)

USDT = SeriesKey("binanceus", "BTC/USDT", "1m")
USD = SeriesKey("binanceus", "BTC/USD", "1m")
XRP = SeriesKey("binance", "XRP/ETH", "1m")
FROM, TO = "2023-03-01", "2023-03-05"  # 4 days: train ~4.1k, val ~0.8k, test ~0.8k samples


def _ms(s: str) -> int:
    return int(pd.Timestamp(s, tz="UTC").value // 1_000_000)


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fusion")
    db = tmp / "t.duckdb"
    with MarketStore(db) as store:
        for key, f in ((USDT, "binanceus/BTC_USDT-1m.csv"), (USD, "binanceus/BTC_USD-1m.csv"),
                       (XRP, "freqtrade/XRP_ETH-1m.csv")):
            store.upsert_candles(key, load_file(shared_data / f))
    raw = yaml.safe_load((Path(main_backtest.__file__).parent / "models.yml").read_text())
    for name in ("cnn", "transformer", "dqn"):
        raw["experts"][name]["device"] = "cpu"
    raw["experts"]["kronos"]["enabled"] = False
    raw["experts"]["transformer"]["enabled"] = False
    raw["labels"]["dead_zone_bps"] = 5  # calm March minutes: see tests/test_training.py
    models_yml = tmp / "models.yml"
    models_yml.write_text(yaml.safe_dump(raw, sort_keys=False))
    common = ["--db", str(db), "--models-dir", str(tmp / "models"), "--from", FROM, "--to", TO]
    rc = main_backtest.main(["--models", str(models_yml), "train", "--experts", "cnn,dqn,moe", *common,
                             "--symbol", USDT.symbol, "--exchange", USDT.exchange, "--epochs", "2",
                             "--max-steps", "12", "--no-progress", "--runs-dir", str(tmp / "runs")])
    assert rc == 0
    return {"tmp": tmp, "db": db, "models_yml": models_yml, "common": common,
            "models": load_models(models_yml), "app": load_config()}


_WALKS: dict[tuple[str, bool, str], dict[str, Any]] = {}


def _walk(trained: dict[str, Any], key: SeriesKey, whole: bool = False) -> dict[str, Any]:
    """The experts, gate and robust layer walked over ``key``'s 4 days (``whole``: its whole file),
    bar by bar as live (computed once per module run; read-only for the tests)."""
    k = (key.symbol, whole, str(trained["tmp"]))
    if k not in _WALKS:
        _WALKS[k] = _walk_once(trained, key, whole)
    return _WALKS[k]


def _walk_once(trained: dict[str, Any], key: SeriesKey, whole: bool) -> dict[str, Any]:
    models, app = trained["models"], trained["app"]
    with MarketStore(trained["db"], read_only=True) as store:
        reg = CheckpointRegistry(store, trained["tmp"] / "models")
        candles = load_candles(store, key, *((None, None) if whole else (_ms(FROM), _ms(TO))))
        prep = prepare(candles, key, models, app)
        experts = load_experts(models, prep.batch.spec, reg, keep_untrained=False, candle_experts=False).experts
        gate, why = load_gate(models, list(experts), len(prep.batch.spec.regime_features), reg)
    assert why is None and gate.trained
    b = prep.batch
    outs = {n: e.predict_many(b) for n, e in experts.items()}
    probs = np.stack([o.probs for o in outs.values()], axis=1)
    ood = np.stack([o.extras["ood"] for o in outs.values()], axis=1)
    conf = np.stack([o.confidence for o in outs.values()], axis=1)
    runner = GateRunner(gate, 5, prep.dead_zone)
    n, E = probs.shape[:2]
    F, W, members = np.zeros((n, 3)), np.zeros((n, E)), np.zeros((n, E + 3, 3))
    for j in range(n):
        W[j], F[j] = runner.step(float(b.close[j]), probs[j], b.regime[j].astype(np.float64), np.ones(E, bool),
                                 ood[j])
        members[j] = runner.last.members
    return {"prep": prep, "experts": experts, "probs": probs, "ood": ood, "F": F, "W": W, "members": members,
            "confidence": np.einsum("ne,ne->n", W, conf), "runner": runner,
            "y": make_labels(b.close, 5, prep.dead_zone)}


def test_fused_within_climatology_on_sister_market(trained: dict[str, Any]) -> None:
    """Checkpoints trained on BTC/USDT, evaluated on BTC/USD (same exchange, same minutes) with 500
    bars of warm-up for the online parts: fused log loss <= climatology + 0.005 (measured)."""
    with MarketStore(trained["db"], read_only=True) as store:
        rep = run_evaluation(store, USD, trained["models"], trained["app"], start_ms=_ms(FROM), end_ms=_ms(TO),
                             models_dir=trained["tmp"] / "models", warmup=500)
    fused = rep["fused"]["log_loss"]
    clim = rep["baseline"]["climatology_h5"]["log_loss"]
    rolling = rep["baseline"]["climatology_rolling"]["log_loss"]
    print(f"BTC/USD test: fused {fused:.4f} climatology {clim:.4f} rolling {rolling:.4f} "
          f"gate alone {rep['gate_static']['log_loss']:.4f} experts "
          f"{ {n: round(s['log_loss'], 4) for n, s in rep['experts'].items()} }")
    assert rep["warmup_bars"] == 500 and rep["fused"]["online"] and rep["fused"]["robust"]
    assert fused <= clim + 0.005, (fused, clim)
    assert fused <= rolling + 0.005, (fused, rolling)
    assert sum(rep["fused"]["mean_weights"].values()) == pytest.approx(1.0, abs=1e-3)
    assert rep["fused"]["mean_weights"]["climatology"] > 0


def test_regret_bound_holds_on_real_outputs(trained: dict[str, Any]) -> None:
    """Cumulative fused log loss <= best member's + h ln M + T ln(1/(1-alpha)) (core/fusion.py)."""
    w = _walk(trained, USD)
    y = w["y"]
    ok = y >= 0
    yk = y[ok]
    fused_loss = -np.log(w["F"][ok, yk]).sum()
    member_loss = -np.log(np.clip(w["members"][ok][np.arange(len(yk)), :, yk], 1e-12, 1)).sum(axis=0)
    cfg = trained["models"].moe.robust
    M, T = w["members"].shape[1], int(ok.sum())
    bound = member_loss.min() + 5 * math.log(M) + T * -math.log(1 - cfg.share)
    assert fused_loss <= bound, (fused_loss, member_loss.tolist(), bound)
    # and the base rate is a member: the fused output is never far above it over the whole walk
    assert fused_loss <= member_loss[-1] + 5 * math.log(M) + T * -math.log(1 - cfg.share)


def test_ood_score_typical_in_training_and_higher_elsewhere(trained: dict[str, Any]) -> None:
    usdt = _walk(trained, USDT)
    prep = usdt["prep"]
    train_ood = usdt["ood"][prep.train]
    # 1 = the median training sample by construction; the mean of the skewed distance is a bit above
    assert 0.9 <= float(np.median(train_ood)) <= 1.1 and float(train_ood.mean()) < 1.5, train_ood.mean()
    xrp = _walk(trained, XRP, whole=True)  # October 2019, another exchange and pair
    usd_mean, xrp_mean = float(train_ood.mean()), float(np.nanmean(xrp["ood"]))
    print(f"mean OOD: BTC/USDT train {usd_mean:.3f}, XRP/ETH {xrp_mean:.3f}")
    assert xrp_mean > 1.5 * usd_mean, (usd_mean, xrp_mean)


def test_gate_weight_of_an_out_of_distribution_expert_falls(trained: dict[str, Any]) -> None:
    """Two runners over the same real history; at the last bar one is told expert 0 is far out."""
    w = _walk(trained, USD)
    prep, probs = w["prep"], w["probs"]
    b = prep.batch
    runners = [GateRunner(load_gate(trained["models"], list(w["experts"]), len(b.spec.regime_features),
                                    CheckpointRegistry(MarketStore(":memory:"), trained["tmp"] / "none"))[0], 5,
                          prep.dead_zone) for _ in range(2)]
    E = probs.shape[1]
    n = 300
    weights = []
    for k, r in enumerate(runners):
        for j in range(n):
            ood = np.ones(E)
            if j == n - 1 and k == 1:
                ood[0] = 10.0  # far outside its training distribution
            wj, _ = r.step(float(b.close[j]), probs[j], b.regime[j].astype(np.float64), np.ones(E, bool), ood)
        weights.append(wj)
    assert weights[1][0] < 0.5 * weights[0][0], weights
    assert ood_discount(np.array([1.0, 3.0, 6.0, np.nan]), 3.0).tolist() == [1.0, 1.0, 0.25, 1.0]


def test_adaptive_conformal_coverage_through_a_regime_change(shared_data: Path) -> None:
    """A band fitted on two calm days (static 10%/90% quantiles of 15-minute returns) run into the
    March 2023 banking-crisis weekend: alone it covers far less than 80%; with ACI (gamma 0.02) the
    last 500 matured forecasts stay within 0.75-0.85 at every cut-off."""
    c = load_file(shared_data / "binanceus" / "BTC_USDT-1m.csv")
    close, ts = c.close.to_numpy(np.float64), c.ts.to_numpy(np.int64)
    h = 15
    for end in ("2023-03-10 18:00", "2023-03-11 06:00", "2023-03-13 00:00", "2023-03-14 00:00"):
        cl = close[: int(np.searchsorted(ts, _ms(end)))]
        r = np.log(cl[h:] / cl[:-h])
        q10, q90 = np.quantile(r[: 2 * 1440], [0.1, 0.9])
        lo, hi = cl * np.exp(q10), cl * np.exp(q90)
        real = np.full(len(cl), np.nan)
        real[:-h] = cl[h:]
        _, _, cov = conformal_bands(cl, lo, hi, real, h, coverage=0.8, gamma=0.02, window=500)
        last = cov[np.isfinite(cov)][-500:]
        static = ((real >= lo) & (real <= hi))[:-h][-500:]
        assert len(last) == 500 and static.mean() < 0.7, (end, static.mean())
        assert 0.75 <= last.mean() <= 0.85, (end, last.mean())


def test_threshold_preview_counts_equal_a_direct_count(trained: dict[str, Any]) -> None:
    w = _walk(trained, USD)
    F, conf = w["F"], w["confidence"]
    fwd = forward_log_returns(w["prep"].batch.close, 5)
    grid = np.array([0.36, 0.4, 0.45, 0.5, 0.6])
    prev = threshold_preview(F, conf, fwd, grid, grid, min_confidence=0.0)
    assert prev.n_bars == len(F) and prev.n_buy.shape == (5, 5)
    assert prev.decisions.max() > 0, "the real fused output never crosses any threshold of the grid"
    for i, b in enumerate(grid):
        for j, s in enumerate(grid):
            t = Thresholds(buy=float(b), sell=float(s), min_confidence=0.0)
            acts = [str(decide(F[k], t, float(conf[k]))) for k in range(len(F))]
            n_buy = sum(a == "BUY" for a in acts)
            n_sell = sum(a == "SELL" for a in acts)
            hits = sum((a == "BUY" and fwd[k] > 0) or (a == "SELL" and fwd[k] < 0) for k, a in enumerate(acts))
            matured = sum(a != "HOLD" and np.isfinite(fwd[k]) for k, a in enumerate(acts))
            assert (prev.n_buy[i, j], prev.n_sell[i, j]) == (n_buy, n_sell)
            assert prev.buy_hits[i, j] + prev.sell_hits[i, j] == hits and prev.matured[i, j] == matured
    with pytest.raises(ValueError, match="fused must be"):
        threshold_preview(F[:, :2], conf, fwd)
    # the default grid follows the data (the base rate keeps fused P(up) far below 0.6 here) and the
    # heatmap draws exactly the preview's numbers
    auto = threshold_preview(F, conf, fwd)
    assert auto.buy[0] <= np.median(np.minimum(F[:, 0], F[:, 2])) + 0.01 and auto.decisions.max() > 0
    fig = threshold_heatmap(preview_json(auto), 0.6, 0.6)
    hm = fig.data[0]
    assert hm.type == "heatmap" and np.asarray(hm.z).shape == auto.n_buy.shape
    np.testing.assert_allclose(np.asarray(hm.z, dtype=float), auto.hit_rate, equal_nan=True)
    assert hm.text[0][0] == f"{auto.n_buy[0, 0]}/{auto.n_sell[0, 0]}"


def test_evaluate_markets_cli_reports_each_market(trained: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    out = trained["tmp"] / "markets.json"
    rc = main_backtest.main(["--models", str(trained["models_yml"]), "evaluate", *trained["common"],
                             "--markets", "binanceus:BTC/USD,binanceus:BTC/USDT,kraken:BTC/EUR",
                             "--warmup", "500", "--walk", "2", "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    rows = {r["market"]: r for r in rep["markets"]}
    assert set(rows) == {"binanceus:BTC/USD@1m", "binanceus:BTC/USDT@1m", "kraken:BTC/EUR@1m"}
    assert "no candles for kraken BTC/EUR" in rows["kraken:BTC/EUR@1m"]["error"]
    usd = rows["binanceus:BTC/USD@1m"]
    assert usd["best_expert"] in ("cnn", "dqn") and usd["fused_log_loss"] > 0
    assert usd["loses_to_climatology"] == (usd["fused_log_loss"] > usd["climatology_log_loss"])
    assert rep["worst_market"] in rows and len(rep["reports"]["binanceus:BTC/USD@1m"]["walk"]) == 2
    text = capsys.readouterr().out
    assert "worst market:" in text and "kraken:BTC/EUR@1m: not evaluated" in text


def test_rolling_climatology_counts_the_window() -> None:
    # hand-written outcome sequence (edge case of the window arithmetic)
    c = RollingClimatology(window=4)
    for y in (0, 0, 2, 2, 2, 1):
        c.observe(y)
    assert c.n == 4 and c.probs().tolist() == pytest.approx([1 / 7, 2 / 7, 4 / 7])


@pytest.mark.parametrize("adapt", [True, False])
def test_run_many_equals_bar_by_bar_steps(trained: dict[str, Any], adapt: bool) -> None:
    """The fast backtest's batched walk and the live per-bar step give the same weights and fused
    output, with the robust layer and OOD discounts on some bars, for an adapting and a fixed gate."""
    w = _walk(trained, USD)
    prep, probs = w["prep"], w["probs"][:1500]
    b = prep.batch.take(slice(0, 1500))
    models = trained["models"]
    models = models.model_copy(update={"moe": models.moe.model_copy(update={"adapt_trained": adapt})})
    ood = w["ood"][:1500].copy()
    ood[::7, 0] = 8.0  # every 7th bar the first expert is far out of its training distribution
    E = probs.shape[1]
    enabled = np.ones((len(b), E), dtype=bool)
    enabled[200:260, 1] = False  # an expert switched off for a while

    def runner() -> GateRunner:
        with MarketStore(trained["db"], read_only=True) as store:
            gate, why = load_gate(models, list(w["experts"]), len(b.spec.regime_features),
                                  CheckpointRegistry(store, trained["tmp"] / "models"))
        assert why is None and gate.adapts == adapt
        return GateRunner(gate, 5, prep.dead_zone)

    r1, r2 = runner(), runner()
    W1, F1 = r1.run_many(b.close.astype(np.float64), probs, b.regime.astype(np.float64), enabled, ood=ood)
    W2, F2 = np.zeros_like(W1), np.zeros_like(F1)
    cw = np.zeros(len(b))
    for j in range(len(b)):
        W2[j], F2[j] = r2.step(float(b.close[j]), probs[j], b.regime[j].astype(np.float64), enabled[j], ood[j])
        cw[j] = r2.climatology_weight
    np.testing.assert_allclose(W1, W2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(F1, F2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r1.climatology_weights, cw, rtol=0, atol=1e-12)
    np.testing.assert_allclose(W1.sum(axis=1) + cw, 1.0, atol=1e-9)
    assert (W1[200:260, 1] == 0).all()
