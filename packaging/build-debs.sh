#!/usr/bin/env bash
# Builds the Debian packages regauth-token-server and
# docker-credential-regauth with cargo-deb, from the static release binaries
# of scripts/build-release.sh (the ones the container image ships), with the
# man pages and shell completions regauth-docgen writes from the command
# line definitions.
#
#   packaging/build-debs.sh [--out DIR]
#
# The default output directory is target/debian. The last two lines of
# stdout are the paths of the two packages. File dates inside the packages
# are SOURCE_DATE_EPOCH (by default the commit's time), so the same commit
# gives the same packages.
#
# Needs cargo-deb 3.8 (`cargo install cargo-deb --version 3.8.0 --locked`),
# git, and dpkg (for the architecture name).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "build-debs.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-debs.sh: cargo-deb is missing; install it with" \
        "\`cargo install cargo-deb --version 3.8.0 --locked\`" >&2
    exit 1
fi

release=$(scripts/build-release.sh | tail -n 1)
triple=$(basename "$(dirname "$release")")
target_dir=$(dirname "$(dirname "$release")")
out=${out:-$target_dir/debian}
mkdir -p "$out"

docs="$release/docgen"
rm -rf "$docs"
"$release/regauth-docgen" --out "$docs" >&2
# cargo-deb compresses only the man pages it did not find under target/.
gzip -9 --no-name "$docs"/man/*.1

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct)}
for package in regauth-token-server docker-credential-regauth; do
    # --strip: the release profile keeps line tables for backtraces, which
    # cargo-deb would otherwise ship.
    cargo deb --package "$package" --no-build --locked --strip --target "$triple" \
        --output "$out" >&2
done
version=$("$release/regauth-token-server" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
for package in regauth-token-server docker-credential-regauth; do
    deb="$out/${package}_${version}-1_${arch}.deb"
    [ -f "$deb" ] || { echo "build-debs.sh: cargo-deb did not write $deb" >&2; exit 1; }
    echo "$deb"
done
