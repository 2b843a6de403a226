#!/usr/bin/env bash
# Installs what the uWebSockets baseline (server.py) needs, on a fresh machine too: Debian's libuv1
# (socketify's shared library links against it; apt-get, so as root) and a venv in
# benches/uws-chat/.venv with requirements.txt. Does nothing that is already done. Called by
# benches/compare.sh (SERVERS="... uws") and scripts/test.sh; prints nothing on success.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

missing=()
ldconfig -p | grep -q 'libuv\.so\.1 ' || missing+=(libuv1)
# Debian's own python3 makes venvs only with python3-venv (ensurepip).
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
# pip's check that every pin is met is quick when they are; a changed pin is installed.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -c 'import socketify' >/dev/null
