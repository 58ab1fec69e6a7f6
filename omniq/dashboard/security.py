"""Who may use the dashboard: credentials from the environment, the bind rule, Host and CSRF.

* Access needs a token (``OMNIQ_DASHBOARD_TOKEN``: ``Authorization: Bearer``, or ``?token=`` once
  in a browser, which sets a session cookie) or basic-auth credentials
  (``OMNIQ_DASHBOARD_USER`` and ``OMNIQ_DASHBOARD_PASSWORD``), when either is set.
* Without credentials the dashboard only listens on a loopback address, and then only answers
  requests whose Host is a loopback name, so a web page cannot reach it by DNS rebinding.
* Every POST carries the CSRF token of the browser's cookie (double submit) and, when the
  browser sends one, an Origin of this dashboard.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "OMNIQ_DASHBOARD_TOKEN"
USER_ENV = "OMNIQ_DASHBOARD_USER"
PASSWORD_ENV = "OMNIQ_DASHBOARD_PASSWORD"
SESSION_COOKIE = "omniq_session"
CSRF_COOKIE = "omniq_csrf"
CSRF_FIELD = "csrf_token"
MIN_TOKEN = 16
OPEN_PATHS = ("/healthz", "/static/")  # no credentials needed: liveness and the stylesheet
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class ConfigurationError(ValueError):
    """Credentials or bind address that the dashboard refuses to start with."""


@dataclass(frozen=True)
class Access:
    """The credentials the dashboard accepts (none: anyone who can reach a loopback bind)."""

    token: str | None = None
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Access:
        token = env.get(TOKEN_ENV) or None
        username = env.get(USER_ENV) or None
        password = env.get(PASSWORD_ENV) or None
        if token is not None and len(token) < MIN_TOKEN:
            raise ConfigurationError(
                f"{TOKEN_ENV} is too short ({len(token)} characters): use at least {MIN_TOKEN}, "
                "e.g. the output of: python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        if (username is None) != (password is None):
            missing = PASSWORD_ENV if password is None else USER_ENV
            raise ConfigurationError(
                f"basic auth needs both {USER_ENV} and {PASSWORD_ENV}; {missing} is not set"
            )
        return cls(token, username, password)

    @property
    def required(self) -> bool:
        return self.token is not None or self.username is not None

    def session_value(self) -> str:
        """The session cookie a token login sets: derived from the token, not the token."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"omniq dashboard session", hashlib.sha256).hexdigest()

    def allows(self, headers: Headers, cookies: Mapping[str, str]) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if self.token is not None:
            if scheme.lower() == "bearer" and _same(value.strip(), self.token):
                return True
            if _same(cookies.get(SESSION_COOKIE, ""), self.session_value()):
                return True
        if self.username is not None and self.password is not None and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            # Both compared, always, so the time taken tells nothing about which one was wrong.
            return _same(user, self.username) & _same(password, self.password)
        return False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8765`` for IPv6) as (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(
            f"--bind wants HOST:PORT, like 127.0.0.1:8765 or [::1]:8765, got {text!r}"
        )
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, access: Access) -> None:
    """Refuse to listen beyond this machine without credentials."""
    if not is_loopback(host) and not access.required:
        raise ConfigurationError(
            f"refusing to listen on {host}, which other machines can reach, without credentials: "
            f"set {TOKEN_ENV} (or {USER_ENV} and {PASSWORD_ENV}), or bind to 127.0.0.1"
        )


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(cookie: str | None, submitted: str | None) -> bool:
    return bool(cookie) and bool(submitted) and _same(str(submitted), str(cookie))


def origin_ok(headers: Headers) -> bool:
    """A POST's Origin, when the browser sends one, must be this dashboard's own."""
    origin = headers.get("origin")
    if origin is None or origin == "null" and headers.get("sec-fetch-site") == "same-origin":
        return True
    return urlsplit(origin).netloc == headers.get("host", "")


class Guard:
    """ASGI middleware: Host check on loopback binds, then credentials when configured."""

    def __init__(self, app: ASGIApp, access: Access, loopback_only: bool) -> None:
        self.app = app
        self.access = access
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.loopback_only and not _loopback_host(headers.get("host", "")):
            response: Response = PlainTextResponse(
                "This dashboard listens on a loopback address and answers only requests for "
                "localhost or 127.0.0.1 (protection against DNS rebinding).\n",
                status_code=421,
            )
            await response(scope, receive, send)
            return
        path = scope["path"]
        if not self.access.required or path.startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        cookies = _cookies(headers)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if self.access.token is not None and "token" in query:
            response = self._token_login(scope, query)
        elif self.access.allows(headers, cookies):
            await self.app(scope, receive, send)
            return
        else:
            response = self._challenge()
        await response(scope, receive, send)

    def _token_login(self, scope: Scope, query: dict[str, str]) -> Response:
        """``?token=...`` in a browser: set the session cookie, drop the token from the URL."""
        assert self.access.token is not None
        if not _same(query.pop("token"), self.access.token):
            return self._challenge()
        rest = urlencode(query)
        response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), 303)
        response.set_cookie(
            SESSION_COOKIE, self.access.session_value(), httponly=True, samesite="strict"
        )
        return response

    def _challenge(self) -> Response:
        hints = []
        if self.access.token is not None:
            hints.append("a token (Authorization: Bearer TOKEN, or open /?token=TOKEN once)")
        headers: dict[str, str] = {}
        if self.access.username is not None:
            hints.append("the user name and password")
            headers["WWW-Authenticate"] = 'Basic realm="OmniQ dashboard", charset="UTF-8"'
        return PlainTextResponse(
            f"This dashboard needs {' or '.join(hints)}.\n", status_code=401, headers=headers
        )


def _loopback_host(host_header: str) -> bool:
    host = host_header.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return is_loopback(host.lower())


def _cookies(headers: Headers) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header: treat as none
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


def csrf_cookie(request_cookies: Mapping[str, Any]) -> str:
    """The browser's CSRF token, or a new one to set."""
    return str(request_cookies.get(CSRF_COOKIE) or new_csrf_token())
