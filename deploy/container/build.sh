#!/usr/bin/env bash
# Builds the regauth token server's container image with `docker build`:
# the static release binary FROM scratch, running as UID/GID 65532, with the
# build host's CA certificates and OCI labels. No base image is pulled.
#
#   deploy/container/build.sh [--tag NAME:TAG]
#
# The default tag is regauth/token-server:VERSION. The last line of stdout is
# the image ID. The same commit gives the same image ID: Docker 20.10's
# builder stamps the build time into the image config, so the script loads
# the built image back with every timestamp set to SOURCE_DATE_EPOCH (by
# default the commit's time) and without the builder's per-build fields.
#
# Environment:
#   DOCKER              the docker CLI (default: docker); DOCKER_HOST as usual
#   SOURCE_DATE_EPOCH   the image's creation time (default: the commit time)
#   REGAUTH_SOURCE_URL  the source label (default: the `origin` remote)
#
# Needs docker, git, jq, strip (binutils) and ca-certificates.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
docker=${DOCKER:-docker}
uid=65532

tag=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
        --tag=*) tag=${1#--tag=}; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "build.sh: $1 is missing; install the Debian package $2" >&2
        exit 1
    }
}
need "$docker" docker.io
need git git
need jq jq
need strip binutils
certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || { echo "build.sh: $certs is missing; install the Debian package ca-certificates" >&2; exit 1; }

release=$("$root/scripts/build-release.sh" | tail -n 1)
bin="$release/regauth-token-server"
version=$("$bin" --version | awk '{print $2}')
tag=${tag:-regauth/token-server:$version}

revision=$(git -C "$root" rev-parse HEAD)
if ! git -C "$root" diff --quiet HEAD -- 2>/dev/null; then
    revision="$revision-dirty"
fi
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
source_url=${REGAUTH_SOURCE_URL:-$(git -C "$root" config --get remote.origin.url || true)}
# A remote URL may carry credentials (https://user:token@host/...).
source_url=$(printf '%s' "$source_url" | sed -E 's#^([a-z+]+://)[^/@]*@#\1#')
if [ -z "$source_url" ]; then
    echo "build.sh: no source URL for the image label: set REGAUTH_SOURCE_URL or an origin remote" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ctx="$work/context"
rootfs="$ctx/rootfs"
mkdir -p "$rootfs/usr/bin" "$rootfs/etc/ssl/certs" "$ctx/datafs/data"
cp "$here/Dockerfile" "$ctx/"
strip -o "$rootfs/usr/bin/regauth-token-server" "$bin"
cp "$certs" "$rootfs/etc/ssl/certs/ca-certificates.crt"
cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
regauth:x:$uid:$uid:regauth token server:/data:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
regauth:x:$uid:
EOF
# The static binary's getaddrinfo has the files and dns sources built in.
cat >"$rootfs/etc/nsswitch.conf" <<EOF
passwd: files
group: files
hosts: files dns
EOF
chmod 0755 "$rootfs" "$rootfs/usr" "$rootfs/usr/bin" "$rootfs/etc" "$rootfs/etc/ssl" "$rootfs/etc/ssl/certs"
chmod 0755 "$rootfs/usr/bin/regauth-token-server"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf" "$rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 0755 "$ctx/datafs"
chmod 0700 "$ctx/datafs/data"
find "$ctx" -exec touch -h -d "@$epoch" {} +

# The legacy builder works with the daemon's own builder on every docker CLI
# version; BuildKit would need the buildx plugin with newer CLIs.
built=$(DOCKER_BUILDKIT=0 "$docker" build --quiet --network none \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    --build-arg "SOURCE=$source_url" \
    --build-arg "CREATED=$created" \
    "$ctx" | tail -n 1)

# Pin the config: the same timestamps every time, and none of the builder's
# per-build fields (the intermediate container and its parent image ID).
saved="$work/saved"
mkdir -p "$saved"
"$docker" save "$built" | tar -x -C "$saved"
config=$(jq -r '.[0].Config' "$saved/manifest.json")
jq -c --arg t "$created" '{
        architecture, os,
        config: (.config | del(.Image)),
        created: $t,
        history: [.history[] | .created = $t],
        rootfs
    }' "$saved/$config" >"$work/config.json"
id=$(sha256sum "$work/config.json" | cut -d' ' -f1)

pinned="$work/pinned"
mkdir -p "$pinned"
cp "$work/config.json" "$pinned/$id.json"
layers=$(jq -c '.[0].Layers' "$saved/manifest.json")
for layer in $(jq -r '.[0].Layers[]' "$saved/manifest.json"); do
    mkdir -p "$pinned/$(dirname "$layer")"
    cp "$saved/$layer" "$pinned/$layer"
done
jq -n -c --arg config "$id.json" --arg tag "$tag" --argjson layers "$layers" \
    '[{Config: $config, RepoTags: [$tag], Layers: $layers}]' >"$pinned/manifest.json"
tar -C "$pinned" -c . | "$docker" load >&2
if [ "sha256:$id" != "$built" ]; then
    "$docker" image rm "$built" >/dev/null 2>&1 || true
fi

loaded=$("$docker" image inspect --format '{{.Id}}' "$tag")
if [ "$loaded" != "sha256:$id" ]; then
    echo "build.sh: docker loaded $loaded, expected sha256:$id" >&2
    exit 1
fi
echo "build.sh: $tag is $loaded (version $version, revision $revision, created $created)" >&2
echo "$loaded"
