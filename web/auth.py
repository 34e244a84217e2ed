"""Dashboard/API access control: a credential always, same-origin control, bounded bodies, safe headers.

Rules (DESIGN.md "Safety defaults", issue 14):
- a token always exists: ``DASHBOARD_TOKEN`` (at least 16 characters) or, when unset, a random one made
  at start-up that ``main_dashboard.py`` prints once inside a login URL (``/?token=...``, Jupyter's model);
- every page, every ``/_dash-*`` route and every ``/api/*`` route needs a session cookie (a random id per
  login, expiring after ``dashboard.session_hours``) or ``Authorization: Bearer <token>`` /
  ``X-Dashboard-Token``; only ``GET /api/health`` is open;
- a request whose ``Host`` is not the bind address, loopback or ``dashboard.allowed_hosts`` is refused
  (DNS rebinding); a state-changing request (POST/PUT/PATCH/DELETE, Dash callbacks included) whose
  ``Origin``/``Referer`` is another origin is refused, and a cookie-authenticated one must carry one of them;
- JSON endpoints need ``Content-Type: application/json`` (a DELETE without a body excepted); bodies are capped (64 KB under ``/api``);
- failed logins are rate-limited per client; every answer carries anti-framing / nosniff / CSP headers.
Comparisons use ``hmac.compare_digest``; the token is never logged or rendered, the audit trail names a
session by a short public label.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, g, jsonify, redirect, request
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response as BaseResponse

COOKIE = "moe_dashboard_session"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
HEALTH_PATH = "/api/health"
MIN_TOKEN_LEN = 16
API_BODY_LIMIT = 64 * 1024  # the API's bodies are a few hundred bytes
UI_BODY_LIMIT = 4 * 1024 * 1024  # Dash callbacks send component state (figures) back
_OPEN_PATHS = frozenset({LOGIN_PATH, LOGOUT_PATH, "/_favicon.ico", "/favicon.ico"})  # logout: even expired
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BindRefused(RuntimeError):
    """Raised when the dashboard would start with a missing or weak credential where one is required."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_token(token: str | None) -> None:
    """A user-set token must be long enough to resist guessing."""
    if token is not None and len(token) < MIN_TOKEN_LEN:
        raise BindRefused(
            f"DASHBOARD_TOKEN is {len(token)} characters; use at least {MIN_TOKEN_LEN} (e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'), or unset it for a random one")


def check_bind(host: str, token: str | None) -> None:
    """Refuse (with a clear message) a short token, and binding off loopback without a token."""
    check_token(token)
    if not is_loopback(host) and not token:
        raise BindRefused(
            f"refusing to bind the dashboard to {host!r} without a token: set DASHBOARD_TOKEN in the "
            "environment (the UI and API then require it), or bind 127.0.0.1"
        )


def new_token() -> str:
    return secrets.token_urlsafe(32)


def host_allow_list(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names (no port, lower case, IPv6 without brackets) the server answers to."""
    names = {"localhost", "127.0.0.1", "::1", *(h.lower().strip("[]") for h in extra)}
    if bind_host not in ("0.0.0.0", "::", ""):
        names.add(bind_host.lower().strip("[]"))
    else:  # every interface: this machine's own name and addresses (a rebinding name still is not one)
        try:
            me = socket.gethostname()
            names.update({me.lower(), *socket.gethostbyname_ex(me)[2]})
        except OSError:
            pass
    return frozenset(names)


def host_name(host_header: str) -> str:
    """``Host`` header -> name without port: ``[::1]:8050`` -> ``::1``, ``Example:80`` -> ``example``."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def safe_next(raw: str | None) -> str:
    """A same-site path to go to after login; anything that a browser could read as another site
    (``//x``, ``/\\x``, ``/%09/x`` once decoded, ``https:x``, control characters) becomes ``/``."""
    if not raw or not raw.startswith("/") or len(raw) > 2000:
        return "/"
    if raw.startswith("//") or "\\" in raw or any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        return "/"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc:
        return "/"
    return raw


@dataclass
class Session:
    label: str  # public name for the audit trail (never the cookie value)
    expires: float


class SessionStore:
    """Server-side sessions: a random id per login, expiring; thread-safe."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = float(ttl_s)
        self._s: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        s = Session(label="session:" + secrets.token_hex(4), expires=time.time() + self.ttl_s)
        with self._lock:
            now = time.time()
            self._s = {k: v for k, v in self._s.items() if v.expires > now}  # drop the expired ones
            self._s[sid] = s
        return sid, s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._s.get(sid)
            if s is not None and s.expires <= time.time():
                del self._s[sid]
                return None
        return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._s.pop(sid or "", None)


class LoginLimiter:
    """At most ``per_min`` failed logins per client in any 60 s window."""

    def __init__(self, per_min: int) -> None:
        self.per_min = int(per_min)
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        now = time.monotonic()
        with self._lock:
            q = self._fails.get(client)
            while q and q[0] <= now - 60:
                q.popleft()
            if q is not None and not q:
                del self._fails[client]  # forget clients without recent failures
            if q is None or len(q) < self.per_min:
                return 0
            return max(1, int(q[0] + 60 - now) + 1)

    def fail(self, client: str) -> None:
        with self._lock:
            self._fails.setdefault(client, deque()).append(time.monotonic())


@dataclass
class AuthPolicy:
    token: str = field(repr=False)
    allowed_hosts: frozenset[str] = frozenset({"localhost", "127.0.0.1", "::1"})
    sessions: SessionStore = field(default_factory=lambda: SessionStore(12 * 3600))
    limiter: LoginLimiter = field(default_factory=lambda: LoginLimiter(10))
    generated: bool = False  # the token was made at start-up (printed once in the login URL)
    csp: str = field(default_factory=lambda: default_csp())

    def token_ok(self, presented: str | None) -> bool:
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.token.encode())


def presented_token() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("X-Dashboard-Token") or None


def who() -> str:
    """Who sent the current request, for the audit trail: a session label or ``token``."""
    return str(getattr(g, "moe_who", "unknown"))


def _json_error(status: int, error: str, message: str) -> Response:
    resp = jsonify(error=error, message=message)
    resp.status_code = status
    return resp


def _origin_of(url: str) -> str | None:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}".lower() if p.scheme and p.netloc else None


def _cross_site() -> str | None:
    """Why a state-changing request is not from the dashboard's own pages, or None when it is."""
    own = f"{request.scheme}://{request.host}".lower()
    origin = request.headers.get("Origin")
    if origin is not None:
        return None if origin.lower() == own else f"Origin {origin[:100]!r} is not {own}"
    referer = request.headers.get("Referer")
    if referer is not None:
        return None if _origin_of(referer) == own else "Referer is another site"
    # non-browser clients (curl, scripts) send the token in a header a foreign page cannot set without a
    # CORS preflight, which this server never grants; a login proves nothing without the token either
    if presented_token() is not None or request.path == LOGIN_PATH:
        return ""
    return "no Origin or Referer header"


def _is_json_route() -> bool:
    p = request.path
    return p.startswith("/api/") or p.startswith("/_dash-update-component")


_LOGIN_FORM = """<!doctype html><html><head><title>MoE Trader - login</title>
<style>body{{background:#222;color:#eee;font-family:sans-serif;display:flex;justify-content:center;
margin-top:15vh}}form{{background:#303030;padding:2em;border-radius:8px}}input{{margin:.5em 0;
padding:.4em;width:18em}}.err{{color:#ef5350}}</style></head><body><form method="post" action="/login">
<h3>MoE Trader dashboard</h3><p>Enter the dashboard token (DASHBOARD_TOKEN, or the one in the login URL
the server printed at start).</p>
<input type="password" name="token" id="token" autofocus><br><input type="hidden" name="next"
value="{next}"><button type="submit" id="login">Log in</button><p class="err">{error}</p></form>
</body></html>"""


def security_headers(resp: Response, csp: str) -> Response:
    h = resp.headers
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "same-origin")
    h.setdefault("Content-Security-Policy", csp)
    h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    return resp


def default_csp(script_hashes: Iterable[str] = ()) -> str:
    """What Dash + plotly need and no more: own scripts plus the hashes of Dash's inline bootstrap
    script; inline styles (plotly, React style props); images as data: (plotly's toImage)."""
    scripts = " ".join(["'self'", *script_hashes])
    return (f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
            "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def _set_session_cookie(resp: BaseResponse, sid: str, ttl_s: float) -> None:
    resp.set_cookie(COOKIE, sid, max_age=max(1, int(ttl_s)), httponly=True, samesite="Strict",
                    secure=request.is_secure, path="/")


def install_auth(server: Flask, policy: AuthPolicy) -> None:
    """Register the guard, the login/logout routes, the health route and the response headers
    (``policy.csp`` is read per response: the app sets it once Dash's inline scripts are known)."""
    server.config["MAX_CONTENT_LENGTH"] = UI_BODY_LIMIT
    server.extensions["moe_auth"] = policy

    @server.before_request
    def _guard() -> ResponseReturnValue | None:
        g.moe_who = "anonymous"
        name = host_name(request.host)
        if name not in policy.allowed_hosts:  # DNS rebinding: a foreign name resolving to us
            return _json_error(403, "forbidden_host", f"host {name[:100]!r} is not served here; add it to "
                                                      "dashboard.allowed_hosts")
        limit = API_BODY_LIMIT if request.path.startswith("/api/") or request.path in _OPEN_PATHS \
            else UI_BODY_LIMIT
        request.max_content_length = limit
        too_large = request.content_length is not None and request.content_length > limit
        open_path = request.path in _OPEN_PATHS or (request.path == HEALTH_PATH and request.method in ("GET", "HEAD"))
        if too_large and open_path:
            return _json_error(413, "too_large", f"request body over {limit} bytes")
        if request.method in _UNSAFE:
            why = _cross_site()
            if why:
                return _json_error(403, "cross_site", f"refused cross-site request: {why}")
        if open_path:
            return None
        if request.method == "GET" and "token" in request.args and not request.path.startswith(("/_dash", "/api/")):
            return _token_login()
        if not _authorise():
            if presented_token() is not None:  # a wrong token: guesses count like failed logins
                policy.limiter.fail(_client())
                wait = policy.limiter.retry_after(_client())
                if wait:
                    return _too_many(wait)
            if _is_json_route() or request.path.startswith("/_dash") or request.method != "GET":
                return _json_error(401, "unauthorized",
                                   "missing or wrong credential: log in at /login, or send "
                                   "'Authorization: Bearer <token>' (or 'X-Dashboard-Token')")
            return redirect(f"{LOGIN_PATH}?{urlencode({'next': safe_next(request.full_path.rstrip('?'))})}")
        # checked after the credential (the body is never read either way): a stranger learns only 401
        if too_large:
            return _json_error(413, "too_large", f"request body over {limit} bytes")
        # a DELETE without a body needs no JSON type: the method alone forces a CORS preflight, and
        # there is nothing to read
        bodyless_delete = request.method == "DELETE" and not request.content_length
        if request.method in _UNSAFE and _is_json_route() and request.mimetype != "application/json" \
                and not bodyless_delete and request.endpoint != "api.unknown":  # wrong method/path: 404/405
            return _json_error(415, "unsupported_media_type",
                               f"Content-Type must be application/json, got {request.mimetype or 'none'!r}")
        return None

    def _authorise() -> bool:
        if policy.token_ok(presented_token()):
            g.moe_who = "token"
            return True
        s = policy.sessions.get(request.cookies.get(COOKIE))
        if s is not None:
            g.moe_who = s.label
            return True
        return False

    def _client() -> str:
        return request.remote_addr or "unknown"

    def _token_login() -> ResponseReturnValue:
        # /?token=... (the printed URL): a session cookie, then the same URL without the token
        rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
        target = safe_next(request.path + (f"?{urlencode(rest)}" if rest else ""))
        wait = policy.limiter.retry_after(_client())
        if wait:
            return _too_many(wait)
        if not policy.token_ok(request.args.get("token")):
            policy.limiter.fail(_client())
            return redirect(f"{LOGIN_PATH}?{urlencode({'next': target})}")
        resp = redirect(target)
        sid, _ = policy.sessions.new()
        _set_session_cookie(resp, sid, policy.sessions.ttl_s)
        return resp

    def _too_many(wait: int) -> Response:
        resp = _json_error(429, "too_many_attempts", f"too many failed logins; retry in {wait} s")
        resp.headers["Retry-After"] = str(wait)
        return resp

    @server.route(HEALTH_PATH, methods=["GET"])
    def _health() -> Response:
        return jsonify(ok=True)

    @server.route(LOGIN_PATH, methods=["GET", "POST"])
    def _login() -> ResponseReturnValue:
        nxt = safe_next(request.values.get("next"))
        if request.method == "POST":
            wait = policy.limiter.retry_after(_client())
            if wait:
                return _too_many(wait)
            token = request.form.get("token")
            if policy.token_ok(token):
                resp = redirect(nxt)
                sid, _ = policy.sessions.new()
                _set_session_cookie(resp, sid, policy.sessions.ttl_s)
                return resp
            policy.limiter.fail(_client())
            return Response(_LOGIN_FORM.format(next=escape(nxt), error="Wrong token."), status=401)
        return _LOGIN_FORM.format(next=escape(nxt), error="")

    @server.route(LOGOUT_PATH, methods=["POST"])
    def _logout() -> ResponseReturnValue:
        policy.sessions.drop(request.cookies.get(COOKIE))
        resp = redirect(LOGIN_PATH)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=request.is_secure)
        return resp

    @server.after_request
    def _headers(resp: Response) -> Response:
        return security_headers(resp, policy.csp)
