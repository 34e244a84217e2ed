"""Dashboard/API access control.

Rules (DESIGN.md "Safety defaults"):
- bound to a loopback address and no DASHBOARD_TOKEN: everything is open (single local user);
- bound to any other address: refuses to start without DASHBOARD_TOKEN (``check_bind``);
- whenever a token is set: the UI requires a login cookie, every control call (PUT/POST/PATCH,
  which includes Dash's own callback POSTs) requires the token, and off loopback every API GET too.
The token is accepted as ``Authorization: Bearer <t>`` or ``X-Dashboard-Token: <t>``; the cookie holds
an HMAC derived from it (never the token itself). Comparisons use ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from html import escape

from flask import Flask, Response, jsonify, redirect, request
from flask.typing import ResponseReturnValue

COOKIE = "moe_dashboard_session"
LOGIN_PATH = "/login"
_OPEN_PATHS = (LOGIN_PATH, "/_favicon.ico", "/favicon.ico")


class BindRefused(RuntimeError):
    """Raised when the dashboard would be reachable from the network without a token."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, token: str | None) -> None:
    """Refuse (with a clear message) to bind off loopback without a token."""
    if not is_loopback(host) and not token:
        raise BindRefused(
            f"refusing to bind the dashboard to {host!r} without a token: set DASHBOARD_TOKEN in the "
            "environment (the UI and API then require it), or bind 127.0.0.1"
        )


@dataclass(frozen=True)
class AuthPolicy:
    token: str | None = field(default=None, repr=False)
    loopback: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def session_value(self) -> str:
        assert self.token
        return hmac.new(self.token.encode(), b"moe-dashboard-session", hashlib.sha256).hexdigest()

    def token_ok(self, presented: str | None) -> bool:
        if not self.token or not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.token.encode())

    def cookie_ok(self, value: str | None) -> bool:
        if not self.token or not value:
            return False
        return hmac.compare_digest(value.encode(), self.session_value().encode())


def presented_token() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("X-Dashboard-Token") or None


def _authorised(policy: AuthPolicy) -> bool:
    return policy.token_ok(presented_token()) or policy.cookie_ok(request.cookies.get(COOKIE))


def _needs_auth(policy: AuthPolicy) -> bool:
    if not policy.enabled:
        return False
    path = request.path
    if path in _OPEN_PATHS:
        return False
    if path.startswith("/api/"):
        # reads are open on loopback; control always needs the token once one is set
        return request.method not in ("GET", "HEAD", "OPTIONS") or not policy.loopback
    return True  # the UI (pages, Dash assets and callback POSTs) needs the login cookie


_LOGIN_FORM = """<!doctype html><html><head><title>MoE Trader - login</title>
<style>body{{background:#222;color:#eee;font-family:sans-serif;display:flex;justify-content:center;
margin-top:15vh}}form{{background:#303030;padding:2em;border-radius:8px}}input{{margin:.5em 0;
padding:.4em;width:18em}}.err{{color:#ef5350}}</style></head><body><form method="post">
<h3>MoE Trader dashboard</h3><p>Enter the dashboard token (DASHBOARD_TOKEN).</p>
<input type="password" name="token" id="token" autofocus><br><input type="hidden" name="next"
value="{next}"><button type="submit" id="login">Log in</button><p class="err">{error}</p></form>
</body></html>"""


def install_auth(server: Flask, policy: AuthPolicy) -> None:
    """Register the before-request guard and the login page on the Flask server."""

    @server.before_request
    def _guard() -> ResponseReturnValue | None:
        if not _needs_auth(policy) or _authorised(policy):
            return None
        if request.path.startswith("/api/") or request.path.startswith("/_dash"):
            resp = jsonify(error="unauthorized",
                           message="missing or wrong token: send 'Authorization: Bearer <token>' "
                                   "or 'X-Dashboard-Token'")
            resp.status_code = 401
            return resp
        return redirect(f"{LOGIN_PATH}?next={request.path}")

    @server.route(LOGIN_PATH, methods=["GET", "POST"])
    def _login() -> ResponseReturnValue:
        nxt = request.values.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"  # no open redirects
        if not policy.enabled:
            return redirect(nxt)
        if request.method == "POST":
            if policy.token_ok(request.form.get("token")):
                resp = redirect(nxt)
                resp.set_cookie(COOKIE, policy.session_value(), httponly=True, samesite="Strict",
                                secure=request.is_secure)
                return resp
            return Response(_LOGIN_FORM.format(next=escape(nxt), error="Wrong token."), status=401)
        return _LOGIN_FORM.format(next=escape(nxt), error="")
