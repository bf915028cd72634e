# Shared set-up for scripts/test, scripts/demo and scripts/bench. Sourced, not run.
# Every step checks before it acts, so a machine that has everything goes through in seconds.

VOLUMED_APT_PACKAGES=(fuse3 libfuse3-dev pkg-config libssl-dev e2fsprogs cryptsetup-bin
                      gcc python3-dev sqlite3 util-linux fio gocryptfs postgresql postgresql-contrib)

_need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "volumed set-up: must run as root (installs packages, uses /dev/fuse and loop devices); rerun with sudo" >&2
        exit 2
    fi
}

volumed_setup_system() {
    _need_root
    local missing=()
    for p in "${VOLUMED_APT_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "volumed set-up: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    [ -e /dev/fuse ] || { modprobe fuse 2>/dev/null || true; }
}

volumed_setup_venv() {
    local py=${PYTHON:-python3}
    if [ ! -x "$ROOT/.venv/bin/python" ]; then
        "$py" -m venv "$ROOT/.venv"
    fi
    local stamp="$ROOT/.venv/.volumed-installed"
    local want
    want=$(cat "$ROOT/pyproject.toml" "$ROOT"/native/*.c "$ROOT"/native/*.h 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "volumed set-up: installing the package (editable, test extras, native extension)" >&2
        "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip setuptools wheel >/dev/null
        "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT[test,bench]"
        echo "$want" > "$stamp"
    fi
}
