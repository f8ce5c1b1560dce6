#!/bin/bash
# Build the project's tiny test guest from Debian packages and register it as the image
# "tiny" in an image directory the compute-agents read ([compute] image_dir).
#
#   tools/build-guest-image.sh [OUTDIR]        (default OUTDIR: <repo>/.cache/guest-image)
#   tools/build-guest-image.sh /var/lib/agents/images   registers it for an installed host
#                                                      (the sample's [compute] image_dir)
#
# Output (a direct-kernel-boot image, as the compute-agent expects it):
#   OUTDIR/tiny/kernel    Debian's cloud kernel (linux-image-*-cloud-amd64), unpacked, not installed
#   OUTDIR/tiny/initrd    busybox-static + virtio-net modules + tools/guest-image/init (gzip cpio)
#   OUTDIR/tiny/cmdline   extra kernel arguments; the compute-agent appends agents.* and console=ttyS0
#
# Cached under OUTDIR/.work: the .deb is downloaded once (apt-get download) and unpacked once;
# the initrd is rebuilt only when one of its inputs changed. A rebuild takes about a second.
# Environment: KERNEL_PKG=linux-image-X-cloud-amd64 pins the kernel package (default: what
# the linux-image-cloud-amd64 meta-package depends on now, or the cached one when apt has no answer).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="$(realpath -m "${1:-$REPO/.cache/guest-image}")"
WORK="$OUTDIR/.work"
IMAGE="$OUTDIR/tiny"
INIT="$REPO/tools/guest-image/init"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
# Dependency order of virtio-net in Debian's cloud kernel (docs/platform.md); init loads them in this order.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net)
CMDLINE="loglevel=4 panic=0"

log() { echo "build-guest-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v dpkg >/dev/null || die "dpkg is needed (Debian)"
command -v cpio >/dev/null || die "cpio is needed (apt-get install cpio)"
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (apt-get install busybox-static)"
file -L "$BUSYBOX" 2>/dev/null | grep -q "statically linked" \
    || ldd "$BUSYBOX" 2>&1 | grep -q "not a dynamic executable" \
    || die "$BUSYBOX is not statically linked (apt-get install busybox-static)"
mkdir -p "$WORK" "$IMAGE"
# Several test runs may build into one cache at once: one at a time, the others then
# find it up to date.
exec 9>"$WORK/.lock"
flock 9

# ---------------------------------------------------------------- kernel package
pkg="${KERNEL_PKG:-}"
if [ -z "$pkg" ]; then
    pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-.*-cloud-amd64$/ { print $2; exit }')" || true
fi
if [ -z "$pkg" ]; then
    cached="$(ls -t "$WORK"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -1)" || true
    [ -n "$cached" ] || die "cannot tell which cloud kernel to use (apt-get update?) and none is cached"
    pkg="$(basename "$cached" | cut -d_ -f1)"
fi
deb="$(ls "$WORK/${pkg}"_*.deb 2>/dev/null | head -1)" || true
if [ -z "$deb" ]; then
    log "downloading $pkg"
    # apt-get download writes to the current directory; _apt cannot write into a root-owned
    # dir, which only costs a warning (it then downloads as root).
    (cd "$WORK" && apt-get download -q "$pkg" 2>&1 | grep -v "^W: Download is performed unsandboxed" >&2) \
        || die "apt-get download $pkg failed"
    deb="$(ls "$WORK/${pkg}"_*.deb | head -1)"
fi
tree="$WORK/${pkg}.tree"
if [ ! -f "$tree/.unpacked" ]; then
    log "unpacking $(basename "$deb")"
    rm -rf "$tree"
    dpkg -x "$deb" "$tree"
    touch "$tree/.unpacked"
fi
kver="${pkg#linux-image-}"
vmlinuz="$tree/boot/vmlinuz-$kver"
[ -f "$vmlinuz" ] || die "no kernel at $vmlinuz"

# ---------------------------------------------------------------- initramfs
find_module() {
    local found
    found="$(find "$tree/lib/modules/$kver" -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" | head -1)"
    [ -n "$found" ] || die "module $1 not in $pkg"
    echo "$found"
}
inputs=("$INIT" "$BUSYBOX" "${BASH_SOURCE[0]}")
for m in "${MODULES[@]}"; do inputs+=("$(find_module "$m")"); done
stamp="$(sha256sum "${inputs[@]}" | sha256sum | cut -d' ' -f1)"

if [ "$(cat "$WORK/initrd.stamp" 2>/dev/null)" = "$stamp" ] && [ -s "$IMAGE/initrd" ]; then
    log "initrd up to date"
else
    log "building initrd"
    root="$(mktemp -d "$WORK/root.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,lib/modules}
    cp "$BUSYBOX" "$root/bin/busybox"
    cp "$INIT" "$root/init"
    chmod 0755 "$root/init" "$root/bin/busybox"
    for m in "${MODULES[@]}"; do
        src="$(find_module "$m")"
        case "$src" in
            *.ko.xz) xz -dc "$src" > "$root/lib/modules/$m.ko" ;;
            *.ko.zst) zstd -qdc "$src" > "$root/lib/modules/$m.ko" ;;
            *) cp "$src" "$root/lib/modules/$m.ko" ;;
        esac
    done
    # The kernel opens /dev/console for init before init can mount devtmpfs.
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || log "warning: cannot mknod /dev/console (not root?)"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z \
        | cpio --null -o -H newc --owner=0:0 --quiet | gzip -9n) > "$IMAGE/initrd.tmp"
    mv "$IMAGE/initrd.tmp" "$IMAGE/initrd"
    echo "$stamp" > "$WORK/initrd.stamp"
fi

cmp -s "$vmlinuz" "$IMAGE/kernel" || cp "$vmlinuz" "$IMAGE/kernel"
[ "$(cat "$IMAGE/cmdline" 2>/dev/null)" = "$CMDLINE" ] || echo "$CMDLINE" > "$IMAGE/cmdline"
echo "$pkg" > "$WORK/kernel.package"
log "image tiny ready in $OUTDIR ($pkg, initrd $(du -k "$IMAGE/initrd" | cut -f1) KiB)"
echo "$OUTDIR"
