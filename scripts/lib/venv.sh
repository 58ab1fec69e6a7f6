# Sourced by scripts/test, scripts/demo and scripts/bench from the repository root:
# creates .venv, installs OmniQ (editable, with the test extra) whenever pyproject.toml
# changed, and makes sure PostgreSQL server binaries exist for the embedded server.

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi

# Reinstall only when pyproject.toml changed: the install is editable, code needs none.
stamp=.venv/.omniq-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" > "$stamp"
fi

# The embedded server needs initdb/pg_ctl/postgres/createdb; install them on a bare Debian box.
if [ -z "${OMNIQ_TEST_DSN:-}" ] \
    && ! .venv/bin/python -c 'from omniq.embedded import find_bindir; find_bindir()' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing PostgreSQL with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
    fi
fi

# PostgreSQL 16 for the second run of scripts/test (--pg 16|all): the pgserver wheel's binaries
# (PostgreSQL 16.2, no contrib modules), the path the README offers machines without a system
# PostgreSQL. A wheel from PyPI, pinned; nothing else is downloaded.
if [ "$(basename "$0")" = test ] && ! .venv/bin/python -c 'import pgserver' 2>/dev/null; then
    .venv/bin/python -m pip install -q --disable-pip-version-check 'pgserver==0.1.4' \
        || echo "pgserver could not be installed; scripts/test --pg 16 cannot run" >&2
fi

# PgBouncer for tests/acceptance/test_pgbouncer.py (scripts/test only; those tests skip, saying why, when
# it cannot be had). Debian's package; its service is not started here, the tests start their own.
if [ "$(basename "$0")" = test ] && ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing PgBouncer with apt-get" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; } \
            || echo "PgBouncer could not be installed; tests/acceptance/test_pgbouncer.py will skip" >&2
    fi
fi

# Chromium for the dashboard's browser tests (tests/acceptance/test_dashboard_browser.py) and
# scripts/screenshots/take: Debian's package, driven headless by Playwright through its
# executable (no browser download). Without it those tests fail, saying how to install it.
case "$(basename "$0")" in test|take)
    if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Chromium with apt-get" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
            || echo "Chromium could not be installed; the dashboard's browser tests will fail" >&2
    fi
esac
