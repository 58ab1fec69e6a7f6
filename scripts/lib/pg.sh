# Sourced by scripts/test: the PostgreSQL versions the suite runs on.
#
#   pg_matrix COMMAND...   runs COMMAND once per server of the matrix, reads and removes the
#                          option --pg 15|16|all from its arguments, and returns the first
#                          non-zero exit code (0 when every run passed).
#
#   --pg 15    Debian's PostgreSQL 15 (/usr/lib/postgresql/15/bin, else what omniq.embedded finds)
#   --pg 16    PostgreSQL 16.2 from the pgserver wheel (scripts/lib/venv.sh installs it): the
#              binaries a machine without a system PostgreSQL gets; it has no contrib modules
#   --pg all   both, one after the other (the default)
# With $OMNIQ_TEST_DSN or $OMNIQ_PG_BINDIR set and no --pg, the suite runs once, on that server.

pg_bindir() {  # the server binaries of one version of the matrix
    case "$1" in
    15)
        if [ -x /usr/lib/postgresql/15/bin/postgres ]; then
            echo /usr/lib/postgresql/15/bin
        else
            env -u OMNIQ_PG_BINDIR .venv/bin/python -c 'from omniq.embedded import find_bindir; print(find_bindir())'
        fi ;;
    16)
        .venv/bin/python -c 'import pathlib, pgserver; print(pathlib.Path(pgserver.__file__).parent / "pginstall" / "bin")' ;;
    *)
        echo "scripts/test: --pg takes 15, 16 or all, not '$1'" >&2
        return 2 ;;
    esac
}

pg_matrix() {
    local pg="" args=() rc=0 run_rc started version bindir summary=()
    while [ $# -gt 0 ]; do
        case "$1" in
        --pg) pg="${2:-}"; shift 2 || shift ;;
        --pg=*) pg="${1#--pg=}"; shift ;;
        *) args+=("$1"); shift ;;
        esac
    done
    if [ -z "$pg" ] && { [ -n "${OMNIQ_TEST_DSN:-}" ] || [ -n "${OMNIQ_PG_BINDIR:-}" ]; }; then
        "${args[@]}" || return
        return 0
    fi
    local versions=()
    case "${pg:-all}" in
    all) versions=(15 16) ;;
    15 | 16) versions=("$pg") ;;
    *) pg_bindir "$pg"; return ;;
    esac
    for version in "${versions[@]}"; do
        if ! bindir="$(pg_bindir "$version")" || [ ! -x "$bindir/postgres" ]; then
            echo "scripts/test: no PostgreSQL $version binaries (for 16: pip install pgserver==0.1.4)" >&2
            if [ "$rc" -eq 0 ]; then rc=1; fi
            summary+=("PostgreSQL $version: not run, no binaries")
            continue
        fi
        echo "scripts/test: PostgreSQL $version: $("$bindir/postgres" --version) from $bindir" >&2
        started=$SECONDS
        run_rc=0
        OMNIQ_PG_BINDIR="$bindir" "${args[@]}" || run_rc=$?
        summary+=("PostgreSQL $version: exit $run_rc in $((SECONDS - started)) s")
        if [ "$rc" -eq 0 ]; then rc=$run_rc; fi
    done
    printf 'scripts/test: %s\n' "${summary[@]}" >&2
    return "$rc"
}
