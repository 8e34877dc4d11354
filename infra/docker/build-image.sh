#!/usr/bin/env bash
# Builds Caracal's OCI image with no network: the release multi-call binary, exactly the shared
# libraries it links (read with ldd, as distroless' `cc` image is made), CA certificates and
# /etc/passwd with the non-root user 65532, assembled FROM scratch by buildah.
#
#   bash infra/docker/build-image.sh        (or `just image`)
#
# Tags the image with the chart's default name: ghcr.io/caracal/caracal:<version>.
# CARACAL_IMAGE overrides the name; BUILDAH_STORAGE (default vfs) the storage driver.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${CARACAL_IMAGE:-ghcr.io/caracal/caracal:$version}
storage=${BUILDAH_STORAGE:-vfs}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
source=$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -1)
command -v buildah >/dev/null || { echo "buildah not found: apt-get install -y buildah" >&2; exit 1; }

cargo build --release --locked -p caracal-bin --bin caracal-all

context=target/image
rootfs=$context/rootfs
rm -rf "$context"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/home/nonroot"

binary=target/release/caracal-all
strip -o "$rootfs/usr/local/bin/caracal-all" "$binary"
for name in caracal caracal-api caracal-coordinator caracal-audit caracal-sts caracal-gateway caracal-control; do
  ln -s caracal-all "$rootfs/usr/local/bin/$name"
done

# Every library the binary links, at the path the loader looks for it (ld.so included).
ldd "$binary" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/home/nonroot"

buildah --storage-driver "$storage" bud --isolation chroot --layers=false \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source" \
  -f infra/docker/Containerfile -t "$image" "$context"
size=$(buildah --storage-driver "$storage" images --format '{{.Size}}' "$image" | head -1)
echo "built $image ($size)"
