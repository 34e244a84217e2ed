"""``evaluate --orderbook-ablation``: does the order-book block add information on this data?

The same samples, labels and chronological split as training; a small multinomial logistic regression
(L2, full-batch Adam, standardised on the train part only) is fit on the flat features twice — with and
without the ``ob_*`` columns — and scored on the test part. It measures the block, not an expert
architecture; on a short recording it is a plumbing check, and the report says how much of the test
part had recorded books at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.config import AppConfig, ModelsConfig
from core.data.store import MarketStore
from core.scoring import log_loss
from core.types import SeriesKey
from NN.training.prepared import Prepared, known_rows, load_book, load_candles, prepare


def _fit_score(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, seed: int,
               steps: int = 300, l2: float = 1e-3) -> dict[str, float]:
    torch.manual_seed(seed)
    mu, sd = x_tr.mean(axis=0), x_tr.std(axis=0)
    sd[sd == 0] = 1.0
    xt = torch.tensor((x_tr - mu) / sd, dtype=torch.float32)
    xe = torch.tensor((x_te - mu) / sd, dtype=torch.float32)
    yt = torch.tensor(y_tr, dtype=torch.long)
    lin = torch.nn.Linear(xt.shape[1], 3)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = torch.softmax(lin(xe), dim=1).numpy().astype(np.float64)
    return {"log_loss": round(float(log_loss(p, y_te)), 5), "accuracy": round(float((p.argmax(1) == y_te).mean()), 4)}


def ablation(prep: Prepared, horizon: int, seed: int = 0) -> dict[str, Any]:
    names = list(prep.batch.spec.flat_features)
    ob = [i for i, n in enumerate(names) if n.startswith("ob_")]
    if not ob:
        raise ValueError("the features have no order-book block: set features.orderbook: true in models.yml")
    y, r = prep.labels(horizon)
    tr, te = known_rows(y, r, prep.train), known_rows(y, r, prep.test)
    if len(tr) < 50 or len(te) < 20:
        raise ValueError(f"too few labelled samples for the ablation (train {len(tr)}, test {len(te)})")
    x = prep.batch.flat.astype(np.float64)
    rest = [i for i in range(len(names)) if i not in ob]
    present = x[:, names.index("ob_present")]
    with_ob = _fit_score(x[tr], y[tr], x[te], y[te], seed)
    without = _fit_score(x[tr][:, rest], y[tr], x[te][:, rest], y[te], seed)
    return {"horizon": horizon, "n_train": int(len(tr)), "n_test": int(len(te)),
            "book_coverage_train": round(float(present[tr].mean()), 4),
            "book_coverage_test": round(float(present[te].mean()), 4),
            "with_orderbook": with_ob, "without_orderbook": without,
            "delta_log_loss": round(with_ob["log_loss"] - without["log_loss"], 5),
            "note": "logistic regression on the flat features, same split; negative delta = the block helped "
                    "on this test part. Evidence only with long recorded history (book record)."}


def run_orderbook_ablation(store: MarketStore, key: SeriesKey, models: ModelsConfig, app: AppConfig, *,
                           start_ms: int | None = None, end_ms: int | None = None,
                           horizon: int | None = None) -> dict[str, Any]:
    if not models.features.orderbook:
        raise ValueError("set features.orderbook: true in models.yml to compare with and without the order-book block")
    candles = load_candles(store, key, start_ms, end_ms)
    prep = prepare(candles, key, models, app, book=load_book(store, key, models, candles))
    h = horizon or models.labels.horizons[0]
    out = ablation(prep, h)
    out["series"] = {"exchange": key.exchange, "symbol": key.symbol, "timeframe": key.timeframe}
    return out



