"""The dashboard's production WSGI server: waitress (pure Python, the same on Linux, macOS and Windows),
``threads`` worker threads, request bodies capped before they reach Flask."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from web.auth import UI_BODY_LIMIT


class DashboardServer:
    """``serve_forever`` blocks; ``shutdown`` (any thread, e.g. a signal handler) makes it return."""

    def __init__(self, wsgi_app: Callable[..., Any], host: str, port: int, threads: int = 8) -> None:
        from waitress.server import create_server

        self._srv: Any = create_server(wsgi_app, host=host, port=port, threads=threads,
                                       max_request_body_size=UI_BODY_LIMIT, ident="moe-trader",
                                       clear_untrusted_proxy_headers=True)
        self.host = host
        self.server_port = int(self._srv.effective_port)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self._srv.run()
        finally:
            self._srv.task_dispatcher.shutdown(timeout=5)  # waits for running requests, then the threads

    def _close_all(self) -> None:
        from waitress import wasyncore

        wasyncore.close_all(self._srv._map)  # listening socket, trigger, open connections: the loop ends

    def shutdown(self) -> None:
        """Stop serving; safe from any thread (the close runs on the server's own loop thread)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self._srv.trigger.pull_trigger(self._close_all)
        except OSError:  # already closed
            pass

    def server_close(self) -> None:
        if not self._stopped.is_set():
            self.shutdown()


def serve_in_thread(wsgi_app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0,
                    threads: int = 8) -> DashboardServer:
    """Start a server on a daemon thread (tests, embedding); ``shutdown()`` stops it."""
    srv = DashboardServer(wsgi_app, host, port, threads)
    threading.Thread(target=srv.serve_forever, name="dashboard-server", daemon=True).start()
    return srv
