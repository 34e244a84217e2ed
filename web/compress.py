"""Faster first chart: gzip for every text response and long-lived caching of fingerprinted assets.

Most of the first chart's time is the browser fetching ~5 MB of JavaScript (plotly.js above all) over
the loopback. Compressed it is ~1.5 MB; compressed bodies of static files are kept (they never change
while the server runs), so only dynamic answers (Dash callbacks, the API) pay for compression, at a
fast level. Dash already marks its fingerprinted component bundles as cacheable for a year; files under
/assets/ carry Dash's ``?m=<mtime>`` fingerprint and get the same.
"""

from __future__ import annotations

import gzip
import threading

from flask import Flask, Response, request

MIN_BYTES = 1024  # smaller bodies gain nothing worth a header
COMPRESSIBLE = ("text/", "application/javascript", "application/json", "application/x-javascript",
                "image/svg+xml")
STATIC_PREFIXES = ("/_dash-component-suites/", "/assets/")
YEAR_S = 31_536_000
_STATIC_CACHE_MAX = 64


def install_compression(server: Flask) -> None:
    cache: dict[tuple[str, int], bytes] = {}
    lock = threading.Lock()

    @server.after_request
    def _compress(resp: Response) -> Response:
        path = request.path
        static = path.startswith(STATIC_PREFIXES)
        if path.startswith("/assets/") and request.args.get("m") and resp.status_code == 200:
            resp.cache_control.max_age = YEAR_S  # the m= fingerprint changes with the file
            resp.cache_control.public = True
            resp.cache_control.no_cache = None  # send_file's default would make the browser revalidate
            resp.cache_control.immutable = True
        if static and resp.direct_passthrough and resp.status_code == 200:
            resp.direct_passthrough = False  # a file (assets: plotly.js): read it so it can be compressed
        if (resp.status_code != 200 or resp.direct_passthrough or "Content-Encoding" in resp.headers
                or "gzip" not in request.headers.get("Accept-Encoding", "").lower()
                or not (resp.mimetype or "").startswith(COMPRESSIBLE)):
            return resp
        data = resp.get_data()
        if len(data) < MIN_BYTES:
            return resp
        key = (request.full_path, len(data))
        body = cache.get(key) if static else None
        if body is None:
            body = gzip.compress(data, compresslevel=6 if static else 1)
            if static:
                with lock:
                    if len(cache) >= _STATIC_CACHE_MAX:
                        cache.pop(next(iter(cache)))
                    cache[key] = body
        resp.set_data(body)
        resp.headers["Content-Encoding"] = "gzip"
        resp.headers["Content-Length"] = str(len(body))
        resp.vary.add("Accept-Encoding")
        return resp
