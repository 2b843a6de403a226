#!/usr/bin/env bash
# Checks deploy/wschat.service and deploy/wschat@.service with `systemd-analyze verify`, which
# needs no running systemd (root in a container is enough). Run by scripts/test.sh.
#
# verify refuses a unit whose ExecStart binary does not exist, so the units are checked as copies
# in a temporary directory, with ExecStart pointing at a copy of /bin/true there: what is checked
# is the unit, not the binary. verify exits 0 on unknown keys and unparsable values (it logs
# "ignoring"), so any output at all counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp /bin/true "$scratch/wschat"
for unit in wschat.service wschat@.service; do
    sed "s|^ExecStart=/usr/local/bin/wschat|ExecStart=$scratch/wschat|" "deploy/$unit" > "$scratch/$unit"
done

failed=0
for unit in wschat.service wschat@1.service; do
    if ! output=$(systemd-analyze verify "$scratch/$unit" 2>&1) || [ -n "$output" ]; then
        printf 'deploy/%s:\n%s\n' "${unit/@1/@}" "$output" >&2
        failed=1
    else
        echo "deploy/${unit/@1/@}: ok"
    fi
done
exit "$failed"
