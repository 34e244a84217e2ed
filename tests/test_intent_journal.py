"""The intent journal (core/execution/journal.py): an order's intent is durable in the append-only file
beside the ledger database before the order leaves, reaches exec_intents with the bar's commit, and is
imported at the next start when the process died before that commit. The intents here are hand-written
(a BTC/USDT market buy), the ledger files real DuckDB files."""

from __future__ import annotations

from core.execution import kernel as K
from core.execution.journal import journal_path
from core.execution.ledger import Intent, Ledger

ACCOUNT = "testnet:BTC/USDT"


def intent(cid: str, bar_ts: int) -> Intent:
    return Intent(cid, f"{ACCOUNT}:1m:{bar_ts}", "BTC/USDT", "buy", "market", 0.01, None, bar_ts, "signal")


def test_intent_is_durable_before_commit_and_imported_at_restart(tmp_path):
    db = tmp_path / "j.duckdb"
    led = Ledger(db, account=ACCOUNT, symbol="BTC/USDT")
    path = journal_path(led.store.path, ACCOUNT)
    assert path is not None and path.parent == tmp_path
    led.write_intent(intent("moe-a", 1_000))
    assert path.read_text().count("moe-a") == 1  # in the journal (fdatasync'd) ...
    assert len(led.store.query_df("SELECT * FROM exec_intents")) == 0  # ... not yet in DuckDB
    assert [i.client_order_id for i in led.unresolved_intents()] == ["moe-a"]
    led.write_intent(intent("moe-a", 1_000))  # a re-processed bar: the first record stays
    assert path.read_text().count("moe-a") == 1
    led.close()  # the process ends before the bar's commit (as kill -9 would)
    led = Ledger(db, account=ACCOUNT, symbol="BTC/USDT")  # restart: the journal is imported
    assert [(i.client_order_id, i.status) for i in led.unresolved_intents()] == [("moe-a", "pending")]
    assert list(led.intents()["client_order_id"]) == ["moe-a"] and path.read_text() == ""
    # the bar's commit carries the resolution; the journal stays empty
    led.write_intent(intent("moe-b", 2_000))
    from dataclasses import replace

    led.record_bar(2_000, "BTC/USDT", 20_000.0, K.new_state(10_000.0), [], [],
                   resolved=[replace(intent("moe-a", 1_000), status="absent"),
                             replace(intent("moe-b", 2_000), status="filled", order_id="42")])
    assert path.read_text() == "" and led.unresolved_intents() == []
    assert led.intent("moe-b") is not None and led.intent("moe-b").status == "filled"  # type: ignore[union-attr]
    led.close()
    led = Ledger(db, account=ACCOUNT, symbol="BTC/USDT")
    st = dict(zip(led.intents()["client_order_id"], led.intents()["status"], strict=True))
    assert st == {"moe-a": "absent", "moe-b": "filled"} and led.unresolved_intents() == []
    led.close()


def test_a_torn_last_line_is_ignored(tmp_path):
    """A crash inside the append (before the fdatasync returned, so before the order left) leaves half a
    line: it is skipped, the complete intents before it are imported."""
    db = tmp_path / "t.duckdb"
    led = Ledger(db, account=ACCOUNT, symbol="BTC/USDT")
    led.write_intent(intent("moe-c", 3_000))
    path = journal_path(led.store.path, ACCOUNT)
    led.close()
    assert path is not None
    with open(path, "ab") as f:
        f.write(b'{"client_order_id":"moe-d","decis')
    led = Ledger(db, account=ACCOUNT, symbol="BTC/USDT")
    assert [i.client_order_id for i in led.unresolved_intents()] == ["moe-c"]
    led.close()


def test_in_memory_store_commits_intents_directly():
    led = Ledger(":memory:", account=ACCOUNT, symbol="BTC/USDT")
    led.write_intent(intent("moe-e", 4_000))
    assert list(led.store.query_df("SELECT client_order_id FROM exec_intents")["client_order_id"]) == ["moe-e"]
    led.close()
