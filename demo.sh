#!/usr/bin/env bash
# pgpool-hook demo: a real Pgpool-II failover, follow-primary and online recovery,
# on one machine, with a timeline of what each hook did and how long it took.
#
#   ./demo.sh           install what is missing, build the cluster in /tmp/pgpool-hook-demo,
#                       kill the primary, recover it, print the timeline; leaves it running
#   ./demo.sh --down    stop the demo cluster and remove /tmp/pgpool-hook-demo
#
# Runs as root on Debian 12 with Python and the PostgreSQL 15 server packages present.
# Installs (only when missing): openssh-server pgpool2 postgresql-15-pgpool2 python3-venv,
# and a venv in /opt/pgpool-hook/venv (from Debian's /usr/bin/python3, readable by the
# postgres user that pgpool runs hooks as) with this checkout installed in it.
# Other options are passed to `python -m sandbox.demo` (see --help there): --base DIR,
# --addresses A,B,C, --pg-port, --ssh-port, --pgpool-port, --pcp-port.
# The demo uses its own addresses and ports (127.0.0.41-43, 25432, 2242, 29999, 29898),
# so it runs beside the test suite without touching it.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PGPOOL_HOOK_VENV:-/opt/pgpool-hook/venv}"
base=/tmp/pgpool-hook-demo
export DEBIAN_FRONTEND=noninteractive

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

args=("$@")
down=""
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --base) base="${args[$((i + 1))]:-$base}" ;;
        --base=*) base="${args[$i]#--base=}" ;;
        --down) down=1 ;;
        -h | --help)
            sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run me as root (the demo starts sshd and runs PostgreSQL and pgpool as postgres)"

if [ -n "$down" ]; then
    if [ -x "$venv/bin/python" ]; then
        cd "$repo"
        exec "$venv/bin/python" -m sandbox.demo "${args[@]}"
    fi
    die "no venv at $venv: nothing was built by the demo on this machine"
fi

# ---- system packages (only what is missing) ------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in openssh-server pgpool2 postgresql-15-pgpool2 python3-venv postgresql-15; do
    installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -ne 0 ]; then
    say "installing ${missing[*]}"
    apt_opts=(-q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    apt-get "${apt_opts[@]}" update </dev/null >/dev/null || die "apt-get update failed"
    # Keep the package scripts from starting Debian's postgresql/pgpool2 services: the demo
    # runs its own instances and wants nothing else answering health checks.
    policy=/usr/sbin/policy-rc.d
    own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    cleanup_policy() { if [ -n "$own_policy" ]; then rm -f "$policy"; own_policy=""; fi; }
    trap cleanup_policy EXIT
    apt-get "${apt_opts[@]}" install "${missing[@]}" </dev/null || die "apt-get install ${missing[*]} failed"
    cleanup_policy
    # ... and stop/disable them in case something started them anyway.
    for service in pgpool2 postgresql; do
        service "$service" stop </dev/null >/dev/null 2>&1 || true
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now "$service" </dev/null >/dev/null 2>&1 || true
        fi
    done
    if [ -s /var/run/postgresql/pgpool.pid ]; then
        kill "$(tr -dc '0-9' </var/run/postgresql/pgpool.pid)" 2>/dev/null || true
    fi
fi

# ---- the hooks' venv: /usr/bin/python3, outside /root, with this checkout installed ----
# "stale" = the checkout's engine, workflows or pyproject.toml changed since the last install.
stamp="$venv/.pgpool-hook-source"
source_hash="$(cd "$repo" && find pyproject.toml engine workflows -type f \
    ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import psycopg, paramiko, jinja2, yaml, jsonschema' 2>/dev/null; then
    say "creating the venv $venv"
    mkdir -p "$(dirname "$venv")"
    chmod 755 "$(dirname "$venv")"
    /usr/bin/python3 -m venv "$venv" || die "could not create $venv (is python3-venv installed?)"
    rm -f "$stamp"
fi
if [ ! -x "$venv/bin/pgpool-hook" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$source_hash" ]; then
    say "installing pgpool-hook from $repo into $venv"
    "$venv/bin/python" -m pip install -q "$repo" </dev/null || die "pip install $repo failed"
    echo "$source_hash" >"$stamp"
fi
chmod -R a+rX "$venv"
export PGPOOL_HOOK_PYTHON="$venv/bin/python"

# ---- the demo -----------------------------------------------------------------------
say "running the demo in $base"
cd "$repo"
exec "$venv/bin/python" -m sandbox.demo "${args[@]}"
