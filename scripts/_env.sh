# Shared set-up for the README's commands: idempotent, safe to re-run on a fresh machine.
# Sourced, not executed. Creates/refreshes .venv and installs the package with the wanted extras.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

dimint_venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    # Reinstall only when pyproject.toml changed since the last successful install.
    local stamp="$VENV/.installed-$extras"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$extras]"
        touch "$stamp"
    fi
}

as_root() {
    if [ "$(id -u)" = "0" ]; then "$@"; else sudo "$@"; fi
}

dimint_system_packages() {
    # Java and the Debian ZooKeeper package back the real-runtime tests; Chromium and its driver
    # the dashboard's browser tests.
    local missing=()
    command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
    [ -f /usr/share/zookeeper/bin/zkServer.sh ] || [ -d /usr/share/zookeeper ] || missing+=(zookeeper)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}" >&2
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
