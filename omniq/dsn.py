"""PostgreSQL connection strings: ``postgresql://`` URLs and libpq ``key=value`` strings.

asyncpg reads only URLs, so a key=value string is rewritten as the equivalent URL, its settings
as query parameters (asyncpg reads those as libpq does, several hosts included). Both forms are
checked when a :class:`~omniq.models.config.PostgresConfig` is built: a malformed string raises
:class:`~omniq.errors.ConfigurationError` saying what is wrong, never a connection error that a
retry loop would retry forever. Stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from .errors import ConfigurationError

# libpq keywords asyncpg understands (its URL query parameters), plus connect_timeout, which
# OmniQ passes as asyncpg's timeout, and application_name and options, which asyncpg sends to
# the server as startup settings, as libpq does.
KEYWORDS = frozenset(
    {
        "host", "port", "dbname", "user", "password", "passfile", "service",
        "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword",
        "sslnegotiation", "ssl_min_protocol_version", "ssl_max_protocol_version",
        "target_session_attrs", "krbsrvname", "gsslib",
        "connect_timeout", "application_name", "options",
    }
)  # fmt: skip
SCHEMES = ("postgresql", "postgres")
_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
_FORM = (
    "Use a URL such as postgresql://user:password@host:5432/dbname (several hosts: "
    "postgresql://user@db1:5432,db2:5432/dbname?target_session_attrs=read-write) or a libpq "
    "string such as 'host=db1,db2 port=5432 user=app dbname=omniq'."
)


@dataclass(frozen=True, slots=True)
class ParsedDSN:
    """What OmniQ needs from a DSN: the URL asyncpg gets, and where it points (for messages)."""

    url: str
    hosts: tuple[str, ...]  # "host:port" each, in the order they are tried
    dbname: str | None
    connect_timeout: float | None
    application_name: str | None = None

    @property
    def where(self) -> str:
        """``host:port[,host:port...]/dbname``, never with a password."""
        return f"{','.join(self.hosts) or 'localhost:5432'}/{self.dbname or '?'}"


def parse_dsn(dsn: str) -> ParsedDSN:
    """Check a URL or key=value DSN; raise ConfigurationError saying what is wrong."""
    text = dsn.strip()
    if "://" in text:
        return _parse_url(text)
    return _from_settings(_parse_key_values(text), url=None)


def _fail(problem: str) -> ConfigurationError:
    return ConfigurationError(f"invalid dsn: {problem}. {_FORM}")


def _parse_key_values(text: str) -> dict[str, str]:
    """libpq's key=value syntax: values bare or 'single-quoted', backslash escapes \\' and \\\\."""
    settings: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        if text[pos:].isspace():
            break
        match = _PAIR.match(text, pos)
        if match is None:
            word = text[pos:].split()[0]
            raise _fail(f"expected key=value, got {word!r}")
        key, pos = match.group(1), match.end()
        value: list[str] = []
        quoted = pos < len(text) and text[pos] == "'"
        pos += quoted
        while pos < len(text):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text):
                value.append(text[pos + 1])
                pos += 2
                continue
            if (quoted and char == "'") or (not quoted and char.isspace()):
                break
            value.append(char)
            pos += 1
        if quoted:
            if pos >= len(text):
                raise _fail(f"the quoted value of {key} has no closing quote")
            pos += 1
        if key not in KEYWORDS:
            raise _fail(f"unknown or unsupported setting {key!r}")
        settings[key] = "".join(value)
    return settings


def _parse_url(text: str) -> ParsedDSN:
    try:
        parts = urlsplit(text)
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if parts.scheme not in SCHEMES:
        raise _fail(f"the scheme must be postgresql:// or postgres://, got {parts.scheme!r}")
    settings = dict(query)
    if "hostaddr" in settings:
        raise _fail("hostaddr is not supported (asyncpg connects by host); use host")
    netloc = parts.netloc.rpartition("@")[2]
    if netloc and "host" not in settings:
        hosts, ports = [], []
        for spec in netloc.split(","):
            host, port = _split_host(spec)
            hosts.append(host)
            ports.append(port)
        settings["host"] = ",".join(hosts)
        if any(ports):
            settings.setdefault("port", ",".join(ports))
    if parts.path.strip("/") and "dbname" not in settings:
        settings["dbname"] = unquote(parts.path.lstrip("/"))
    url = text
    if "connect_timeout" in settings:  # asyncpg would send it to the server as a setting
        kept = [(k, v) for k, v in query if k != "connect_timeout"]
        url = urlunsplit(parts._replace(query=urlencode(kept)))
    return _from_settings(settings, url)


def _split_host(spec: str) -> tuple[str, str]:
    """``host``, ``host:port``, ``[::1]:port`` -> (host, port or "")."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return unquote(host), rest.removeprefix(":")
    host, _, port = spec.partition(":")
    return unquote(host), port


def _from_settings(settings: dict[str, str], url: str | None) -> ParsedDSN:
    hosts = settings["host"].split(",") if settings.get("host") else []
    ports = [p or "5432" for p in settings["port"].split(",")] if settings.get("port") else []
    for port in ports:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise _fail(f"port {port!r} is not a number between 1 and 65535")
    if len(ports) > 1 and len(ports) != len(hosts):
        raise _fail(f"{len(hosts)} hosts but {len(ports)} ports: give one port, or one per host")
    seconds = None
    if settings.get("connect_timeout"):
        try:
            seconds = float(settings["connect_timeout"])
        except ValueError:
            raise _fail(
                f"connect_timeout must be seconds, got {settings['connect_timeout']!r}"
            ) from None
    if url is None:  # key=value: the same settings as URL query parameters, as asyncpg reads them
        given = {k: v for k, v in settings.items() if k != "connect_timeout"}
        if ports:
            given["port"] = ",".join(ports)
        url = "postgresql://?" + urlencode(given, quote_via=quote)
    shown = [
        f"{_host_text(host)}:{ports[min(i, len(ports) - 1)] if ports else 5432}"
        for i, host in enumerate(hosts or ["localhost"])
    ]
    return ParsedDSN(
        url, tuple(shown), settings.get("dbname"), seconds or None, settings.get("application_name")
    )


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host or "localhost"
