#!/usr/bin/env bash
# Builds the static release binaries that the container image and the Debian
# packages both ship, once: `regauth-token-server` and
# `docker-credential-regauth`, linked with `+crt-static` for the host's
# linux-gnu target, with this checkout's paths remapped out of them. The
# packages' man page generator, `regauth-docgen`, comes out of the same build.
#
# Extra arguments go to cargo (bench/ adds `-p regauth-floor`, so the floor
# it measures against is built the same way).
#
# Prints the directory holding the binaries on the last line of stdout;
# cargo's progress goes to stderr. Running it again is a no-op when nothing
# changed, and cargo's own lock serializes concurrent runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

triple=$(rustc -vV | sed -n 's/^host: //p')
case "$triple" in
    *-linux-gnu) ;;
    *)
        echo "build-release.sh: static builds are set up for *-linux-gnu hosts, not $triple" >&2
        exit 1
        ;;
esac

# crt-static applies to the target only because --target is explicit; build
# scripts and proc macros stay dynamic. The remaps keep build paths out of
# the binaries, so they do not depend on where the checkout lives.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$root=/regauth --remap-path-prefix=$cargo_home=/cargo"
cargo build --release --locked --target "$triple" \
    -p regauth-token-server -p docker-credential-regauth -p regauth-docgen --bins "$@" >&2

target=${CARGO_TARGET_DIR:-target}
case "$target" in
    /*) ;;
    *) target="$root/$target" ;;
esac
echo "$target/$triple/release"
