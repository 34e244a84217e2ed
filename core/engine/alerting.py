"""Which alerts a new engine snapshot raises, compared with what the previous ones showed (pure).

The engine calls ``snapshot_alerts`` after every publish (live / paper / testnet, never a replay) and
hands each (event, details) to the notifier (core/alerts.py):
* stream_lost / stream_restored: a source's ``connected`` flipped;
* promotion: a live-training swap of kind ``promote`` newer than the last one seen;
* trainer_crash: a trainer process died (its restart count grew, or it reports a new error), or an
  engine error raised while training (``where`` training / train-now);
* error: any other engine error newer than the last one seen.
``seen`` is the caller's memory between snapshots (mutated here).
"""

from __future__ import annotations

from typing import Any

from core.snapshot import EngineSnapshot

Alert = tuple[str, dict[str, Any]]


def snapshot_alerts(snap: EngineSnapshot, seen: dict[str, Any]) -> list[Alert]:
    out: list[Alert] = []
    for name, st in snap.sources.items():
        was = seen.get(f"src:{name}")
        if was is True and not st.connected:
            out.append(("stream_lost", {"source": name, "symbol": snap.symbol, "error": st.error or ""}))
        elif was is False and st.connected:
            out.append(("stream_restored", {"source": name, "symbol": snap.symbol}))
        seen[f"src:{name}"] = bool(st.connected)
    last_swap = int(seen.get("swap_ms", -1))
    for sw in snap.swaps:  # a bounded deque: new swaps are told by their time, not their count
        if sw.ts_ms > last_swap and sw.kind == "promote":
            out.append(("promotion", {"expert": sw.expert, "version": sw.version, "previous": sw.previous,
                                      "champion_logloss": sw.champion_score,
                                      "challenger_logloss": sw.challenger_score}))
    if snap.swaps:
        seen["swap_ms"] = max(last_swap, max(sw.ts_ms for sw in snap.swaps))
    for name, tr in snap.trainers.items():
        restarts, err = int(tr.restarts), tr.error or ""
        before = seen.get(f"trainer:{name}")
        if before is not None and (restarts > before[0] or (err and err != before[1])):
            out.append(("trainer_crash", {"expert": name, "restarts": restarts, "error": err[:300],
                                          "running": bool(tr.running)}))
        seen[f"trainer:{name}"] = (restarts, err)
    last = int(seen.get("err_ms", 0))
    for e in snap.errors:
        if e.ts_ms > last:
            kind = "trainer_crash" if e.where.startswith("train") else "error"
            out.append((kind, {"where": e.where, "message": e.message[:300]}))
    if snap.errors:
        seen["err_ms"] = max(last, max(e.ts_ms for e in snap.errors))
    return out
