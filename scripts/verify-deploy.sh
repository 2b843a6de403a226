#!/usr/bin/env bash
# Checks the parts of deploy/ that tests/proxies.rs does not run: the systemd units with
# `systemd-analyze verify`, nginx's TLS site with `nginx -t`, the Caddyfile with its production
# defaults with `caddy adapt`. Needs no running systemd and touches no network (root in a
# container is enough). Run by scripts/test.sh; installs what is missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v nginx >/dev/null || missing+=(nginx)
command -v caddy >/dev/null || missing+=(caddy)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
report() { # report NAME OUTPUT STATUS: any output at all from a check that passes quietly fails
    if [ "$3" -ne 0 ] || [ -n "$2" ]; then
        printf '%s:\n%s\n' "$1" "$2" >&2
        failed=1
    else
        echo "$1: ok"
    fi
}

# verify refuses a unit whose ExecStart binary does not exist, so the units are checked as copies
# with ExecStart pointing at a copy of /bin/true: what is checked is the unit, not the binary.
# verify exits 0 on unknown keys and unparsable values (it logs "ignoring"), hence the rule above.
cp /bin/true "$scratch/wschat"
for unit in wschat.service wschat@.service; do
    sed "s|^ExecStart=/usr/local/bin/wschat|ExecStart=$scratch/wschat|" "deploy/$unit" >"$scratch/$unit"
done
for unit in wschat.service wschat@1.service; do
    status=0
    output=$(systemd-analyze verify "$scratch/$unit" 2>&1) || status=$?
    report "deploy/${unit/@1/@}" "$output" "$status"
done

# The site as an operator installs it, with a throwaway certificate in place of the real one and
# the snippet included from deploy/.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=chat.example.com \
    -keyout "$scratch/privkey.pem" -out "$scratch/fullchain.pem" 2>/dev/null
sed -e "s|/etc/ssl/wschat/|$scratch/|" -e "s|/etc/nginx/snippets/wschat.conf|$PWD/deploy/nginx-wschat.conf|" \
    deploy/nginx.conf >"$scratch/site.conf"
printf 'pid %s/nginx.pid;\nevents {}\nhttp {\n    include %s/site.conf;\n}\n' "$scratch" "$scratch" \
    >"$scratch/nginx.conf"
status=0
output=$(nginx -t -q -p "$scratch" -c "$scratch/nginx.conf" -e "$scratch/error.log" 2>&1) || status=$?
report "deploy/nginx.conf + deploy/nginx-wschat.conf" "$output" "$status"

# adapt only parses (it starts nothing and asks no certificate authority); its warnings go to
# stderr, the JSON to stdout.
status=0
output=$(caddy adapt --config deploy/Caddyfile --adapter caddyfile 2>&1 >/dev/null) || status=$?
report "deploy/Caddyfile" "$output" "$status"

exit "$failed"
