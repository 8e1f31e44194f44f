#!/usr/bin/env bash
# Runs the full regauth test suite: unit, property, router and end-to-end
# tests. The end-to-end tests drive real programs from Debian packages; this
# script installs any that are missing (with sudo when not root), and
# cargo-deb for the package tests, then runs `cargo test --workspace`. Extra
# arguments go to cargo test.
#
# The Docker Engine, container image and Debian package tests start a
# private dockerd and install packages in a mount namespace, so the suite
# runs as root, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package
declare -A needed=(
    [docker-registry]=docker-registry
    [skopeo]=skopeo
    [containerd]=containerd
    [ctr]=containerd
    [htpasswd]=apache2-utils
    [openssl]=openssl
    [dockerd]=docker.io
    [docker]=docker.io
    [dnsmasq]=dnsmasq-base
    [lintian]=lintian
    [jq]=jq
    [git]=git
    [readelf]=binutils
    [strip]=binutils
    [adduser]=adduser
    [systemd-analyze]=systemd
    [kubectl]=kubernetes-client
    [redis-server]=redis-server
    [redis-sentinel]=redis-sentinel
    [redis-cli]=redis-tools
    [haproxy]=haproxy
)
missing=()
for cmd in "${!needed[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${needed[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "test.sh: installing Debian packages: ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" ca-certificates >/dev/null
fi

# The Debian package tests build with cargo-deb; the version is pinned.
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $cargo_deb_version"; then
    echo "test.sh: installing cargo-deb $cargo_deb_version" >&2
    cargo install cargo-deb --version "$cargo_deb_version" --locked --quiet
fi

exec cargo test --workspace "$@"
