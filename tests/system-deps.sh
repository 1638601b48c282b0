#!/usr/bin/env bash
# What the test suite needs from the machine beyond the venv, installed from Debian's packages when missing: the
# PostgreSQL server (integration tests start a real one), Prometheus with promtool and the Pushgateway (serving and
# drift tests), the Docker engine with debootstrap (the container tier builds the image and runs the chart's
# pods), and Chromium (the drift report is opened in a headless browser). `.ci/run` and `make test` both run this
# script. As root it installs what is missing; as another user it installs nothing and names what is missing: the
# tests that need it then skip, saying so.
set -euo pipefail

have_pg() { command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; }
have() { command -v "$1" >/dev/null 2>&1; }

missing=()
have_pg || missing+=(postgresql)
have prometheus || missing+=(prometheus)
have prometheus-pushgateway || missing+=(prometheus-pushgateway)
have dockerd || missing+=(docker.io)
have debootstrap || missing+=(debootstrap)
have chromium || missing+=(chromium)

if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "system-deps: not root, so not installing: ${missing[*]} (Debian packages); the tests needing them skip" >&2
    else
        echo "system-deps: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi
# Tests run Postgres as the 'postgres' system user when root; the Debian package creates it.
if [[ $(id -u) == 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
