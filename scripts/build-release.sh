#!/usr/bin/env bash
# Builds the static release binaries that the container image and the Debian
# packages both ship, once: `regauth-token-server` (a static PIE) and
# `docker-credential-regauth` (static, not PIE: see below), linked with
# `+crt-static` for the host's linux-gnu target, with this checkout's paths
# remapped out of them. The packages' man page generator, `regauth-docgen`,
# comes out of the same build.
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
    -p regauth-token-server -p regauth-docgen --bins "$@" >&2

# The credential helper starts once per pull (and docker runs it for every
# registry it talks to), so it is linked as a static executable that is not
# position independent: a static PIE relocates itself at every start, about
# 18,000 relocations and the page faults of writing them, which was 39 % of
# the instructions of a warm `get`. Only the binary's own crate needs the
# flag; its dependencies stay PIC and are resolved at link time. The token
# server stays a PIE, so a long-running network daemon keeps full ASLR.
# REGAUTH_RELEASE_NOPIE lists PACKAGE:BINARY pairs built this way.
for pair in ${REGAUTH_RELEASE_NOPIE:-docker-credential-regauth:docker-credential-regauth}; do
    cargo rustc --release --locked --target "$triple" -p "${pair%%:*}" --bin "${pair#*:}" \
        -- -C relocation-model=static >&2
done

target=${CARGO_TARGET_DIR:-target}
case "$target" in
    /*) ;;
    *) target="$root/$target" ;;
esac
echo "$target/$triple/release"
