"""The page's HTML shell: which scripts the browser loads before the first chart.

Measured in headless Chromium on this 2-core machine (bench/bench_dashboard.py, /tmp profiles), the
first chart waited on script work that does nothing for a modern browser:

- ``@babel/polyfill`` (core-js 2): ~0.1 s to evaluate, and it replaces the browser's native
  ``String.prototype.trim`` with a regex version (its whitespace test expects U+180E, which Unicode 6.3
  dropped), which plotly calls thousands of times while drawing: ~0.1 s more. The only thing Dash's
  bundles take from it is ``regeneratorRuntime`` (``mark`` and ``wrap``, for one async helper), which
  ``assets/00-regenerator.js`` provides.
- the ``dash_table`` bundle: Dash registers it on import; no page here uses a DataTable.
- the page itself came from a callback that the browser could send only after the layout and the
  callback graph had arrived and been processed; ``page_path`` lets the layout hold the page at once.
- dcc's Graph and Dropdown are lazy chunks the page fetched only after the layout had arrived;
  loaded with the other scripts, they are ready when the first figure is.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from dash import Dash
from flask import has_request_context, request

SKIPPED_SCRIPTS = ("/deps/polyfill@", "/dash_table/")
EAGER_CHUNKS = ("async-graph", "async-dropdown")  # dcc chunks the Live page needs for its first render
_SCRIPT = re.compile(r'<script src="([^"]+)"></script>')
_DCC = re.compile(r"(/dash/dcc/)dash_core_components(\.v[^/\"]*?)?\.js$")


def lean_scripts(scripts: str) -> str:
    """Dash's ``<script>`` tags without the skipped bundles, plus dcc's eager chunks right after dcc
    (same fingerprint as dcc's own bundle, so they are cached for a year like it)."""
    out: list[str] = []
    for tag in scripts.splitlines():
        m = _SCRIPT.search(tag)
        if m and any(s in m.group(1) for s in SKIPPED_SCRIPTS):
            continue
        out.append(tag)
        d = _DCC.search(m.group(1)) if m else None
        if m and d:
            base = m.group(1)[: d.start()] + d.group(1)
            out += [f'<script src="{base}{name}{d.group(2) or ""}.js"></script>' for name in EAGER_CHUNKS]
    return "\n".join(out)


class LeanDash(Dash):
    """Dash with the lean script list (``interpolate_index`` is Dash's documented hook for the page)."""

    def interpolate_index(self, metas: Any = "", title: Any = "", css: Any = "", config: Any = "",
                          scripts: Any = "", app_entry: Any = "", favicon: Any = "", renderer: Any = "") -> Any:
        return super().interpolate_index(metas=metas, title=title, css=css, config=config,
                                         scripts=lean_scripts(scripts), app_entry=app_entry, favicon=favicon,
                                         renderer=renderer)


def page_path() -> str:
    """The dashboard page the browser is on while it fetches ``/_dash-layout``: the path of the request's
    Referer (sent to the same origin under the ``Referrer-Policy: same-origin`` set in web/auth.py).
    "/" when there is none or it names another site; the page's ``url`` callback then asks for the right
    page. Compared as is with the browser's ``location.pathname`` (web/assets/shell.js)."""
    if not has_request_context():
        return "/"
    ref = urlsplit(request.referrer or "")
    if ref.netloc and ref.netloc != request.host:
        return "/"
    return ref.path or "/"
