#!/usr/bin/env bash
# Builds the node image `domicile:local` (or $DOMICILE_IMAGE) from this checkout, with nothing pulled:
# a release `domicile` linked statically against glibc, without the simulator (--no-default-features),
# stripped, in a FROM scratch image. Needs the Rust toolchain, binutils (strip, readelf) and Docker.
#
#   deploy/image/build.sh            # prints the image's tag and size
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tag=${DOMICILE_IMAGE:-domicile:local}
target=x86_64-unknown-linux-gnu
# A target directory of its own: the static flags would otherwise rebuild the workspace's usual one.
target_dir=${DOMICILE_STATIC_TARGET_DIR:-$root/target/static}

# The flags apply to the target only (build scripts and proc macros stay dynamic), hence --target.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
  --manifest-path "$root/Cargo.toml" --target "$target" --target-dir "$target_dir" \
  -p domicile --no-default-features
binary=$target_dir/$target/release/domicile

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
strip -o "$context/domicile" "$binary"
# A scratch image has no dynamic loader and no libc: refuse anything that asks for either.
if readelf --program-headers "$context/domicile" | grep -q INTERP \
  || readelf --dynamic "$context/domicile" | grep -q NEEDED; then
  echo "build.sh: $binary is not statically linked:" >&2
  file "$context/domicile" >&2
  exit 1
fi
"$context/domicile" --version >/dev/null
cp "$root/deploy/image/Dockerfile" "$root/deploy/image/nsswitch.conf" "$context/"
mkdir "$context/data"

revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
docker build --quiet --tag "$tag" \
  --label "org.opencontainers.image.title=domicile" \
  --label "org.opencontainers.image.revision=$revision" \
  "$context" >/dev/null
echo "$tag: $(docker image inspect "$tag" --format '{{.Size}}' | awk '{ printf "%.1f MB", $1 / 1000000 }')," \
  "built from $revision$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' with local changes')"
