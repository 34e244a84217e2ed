"""/api/annotations on the REAL engine replaying shared BTC/USDT data (the file is in its store)."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import api_client, replay_engine

from core.config import Secrets
from web.app import create_app


def api_call(client, method: str, path: str, body=None):
    return client.open(path, method=method, json=body)


def ms(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1_000_000)


@pytest.fixture(scope="module")
def running(shared_data, tmp_path_factory):
    eng, cfg, _ = replay_engine(shared_data, tmp_path_factory.mktemp("ann_api"), min_bars=20)
    yield eng, api_client(create_app(eng, cfg, host="127.0.0.1", secrets=Secrets()))
    eng.stop()


def test_create_patch_case_delete(running) -> None:
    eng, client = running
    body = {"symbol": "BTC/USDT", "timeframe": "1m", "entry_ts": ms("2023-03-03T02:00:20Z"),
            "exit_ts": ms("2023-03-03T02:07:00Z"), "notes": "first", "tags": ["breakout"]}
    r = api_call(client, "POST", "/api/annotations", body)
    assert r.status_code == 201, r.get_json()
    a = r.get_json()
    # snapped to the 02:00 / 02:07 candles and their closes (CSV rows of 2023-03-03)
    assert (a["entry_ts"], a["entry_price"], a["exit_price"], a["direction"]) == (
        ms("2023-03-03T02:00Z"), 22235.23, 22292.6, "long")
    assert a["outcome"]["holding_bars"] == 7 and a["outcome"]["pnl_pct"] == pytest.approx(100 * 57.37 / 22235.23)
    row = eng.store.query_one("SELECT count(*), max(version) FROM annotations WHERE id = ?", [a["id"]])
    assert row == (1, 1)
    # dragging the exit to 02:10 (close 22245.04) updates the P&L and keeps version 1
    r = api_call(client, "PATCH", f"/api/annotations/{a['id']}", {"exit_ts": ms("2023-03-03T02:10Z")})
    assert r.status_code == 200, r.get_json()
    b = r.get_json()
    assert b["version"] == 2 and b["exit_price"] == 22245.04
    assert b["outcome"]["pnl_pct"] == pytest.approx(100 * (22245.04 - 22235.23) / 22235.23)
    lst = api_call(client, "GET", "/api/annotations?symbol=BTC/USDT").get_json()["annotations"]
    assert [x["id"] for x in lst] == [a["id"]]
    c = api_call(client, "GET", f"/api/annotations/{a['id']}/case").get_json()
    assert len(c["cases"]) == 11 and c["cases"][0]["label"] == "ENTRY" and c["cases"][-1]["label"] == "EXIT"
    assert c["cases"][0]["target"] == "UP" and "1m:rsi" in c["cases"][0]["features"]["flat"]
    # a DELETE needs no body (and so no JSON type); one with a non-JSON body is still refused
    r = client.open(f"/api/annotations/{a['id']}", method="DELETE", data="x", content_type="text/plain")
    assert r.status_code == 415
    r = client.delete(f"/api/annotations/{a['id']}")
    assert r.status_code == 200 and r.get_json()["deleted"] is True
    assert api_call(client, "GET", "/api/annotations").get_json()["annotations"] == []
    assert api_call(client, "GET", f"/api/annotations/{a['id']}/case").status_code == 404
    assert eng.store.query_one("SELECT count(*) FROM annotations WHERE id = ?", [a["id"]]) == (3,)


@pytest.mark.parametrize("change,status,words", [
    ({"entry_ts": ms("2022-01-01T00:00Z"), "exit_ts": ms("2022-01-01T00:05Z")}, 422, "outside the stored data"),
    ({"timeframe": "7x"}, 422, "timeframe"),
    ({"direction": "up"}, 422, "direction"),
    ({"entry_price": 1.0}, 422, "outside its candle's range"),
    ({"symbol": "ETH/USDT"}, 404, "no stored 1m candles"),
    ({"bogus": 1}, 422, "unknown field"),
])
def test_bad_requests_say_why(running, change: dict, status: int, words: str) -> None:
    _, client = running
    body = {"symbol": "BTC/USDT", "timeframe": "1m", "entry_ts": ms("2023-03-03T02:00Z"),
            "exit_ts": ms("2023-03-03T02:07Z"), **change}
    r = api_call(client, "POST", "/api/annotations", body)
    assert r.status_code == status and words in r.get_json()["message"], r.get_json()
