#!/usr/bin/env bash
# The quick start on a bare Debian: build a minimal bookworm root with debootstrap, put a
# clean clone of this repository in it, and run `make demo` (and, asked for, `make test`)
# there, so that every system package the project needs must come from its own
# scripts/setup-system.sh. Run as root (debootstrap, chroot, mounts).
#
#   scripts/bare-install.sh [demo|test|both] [ROOT]     (make bare-install runs `demo`)
#
# The root starts with Debian's minbase variant plus `make` and `ca-certificates`: what
# it takes to type `make demo` on a fresh machine. It shares the host's network, and so
# the host's settings for it: resolv.conf, hosts, extra CA certificates (a site's TLS
# proxy) and pip's configuration are copied in, nothing else. The clone is of HEAD (commit first), as CI
# clones. It runs in a mount namespace of its own (see in_root), so nothing stays mounted
# on the host; the root stays for a second run (delete it to start over). Reports the
# time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-demo}
root=${2:-${TFYARN_BARE_ROOT:-/var/tmp/tfyarn-bare-bookworm}}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
case "$what" in demo | test | both) ;; *)
    echo "usage: $0 [demo|test|both] [ROOT]" >&2
    exit 2
    ;;
esac
if [ "$(id -u)" != 0 ]; then
    echo "bare-install: needs root (debootstrap, chroot, mounts)" >&2
    exit 1
fi
step() { printf '\n== bare-install: %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
started=$SECONDS

if ! command -v debootstrap >/dev/null; then
    step "installing debootstrap on the host"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
fi
if [ ! -x "$root/usr/bin/make" ]; then
    step "debootstrap bookworm (minbase) into $root"
    rm -rf "$root"
    debootstrap --variant=minbase --include=make,ca-certificates bookworm "$root" "$mirror"
fi

cp /etc/resolv.conf /etc/hosts "$root/etc/"
# The host's trust settings for the network the root shares (see the header).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"

step "a clean clone of HEAD ($(git rev-parse --short HEAD)) into the root"
rm -rf "$root/root/tfyarn"
git clone -q --no-hardlinks "$PWD" "$root/root/tfyarn"
if [ -d ../shared ]; then # the data sets CI has beside the clone (read-only)
    rm -rf "$root/root/shared"
    cp -r ../shared "$root/root/shared"
fi

# Run $1 in the root as a machine of its own would: in a new mount namespace whose "/"
# *is* the root (pivot_root, not chroot). The tests start nested mount namespaces (ip
# netns, the dev YARN's hidden Python) and read /proc/PID/cwd across them; under a plain
# chroot "/" is not a mount root, so the kernel reports such paths from the host's "/"
# and propagation changes of "/" fail (EINVAL). Every mount dies with the namespace.
in_root() {
    unshare --mount --fork -- bash -euo pipefail -c '
        root=$1
        mount --make-rprivate /
        mount --bind "$root" "$root"
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
        mount -t tmpfs -o mode=755 run "$root/run"
        mkdir -p "$root/.host"
        cd "$root"
        pivot_root . .host
        cd /
        umount -l /.host
        rmdir /.host
        exec /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            bash -c "cd /root/tfyarn && $2"
    ' bash "$root" "$1"
}
status=0
if [ "$what" != test ]; then
    step "make demo in the bare root"
    t0=$SECONDS
    in_root "make demo" || status=$?
    echo "bare-install: make demo exited $status after $((SECONDS - t0)) s"
fi
if [ "$status" = 0 ] && [ "$what" != demo ]; then
    step "make test in the bare root"
    t0=$SECONDS
    in_root "make test" || status=$?
    echo "bare-install: make test exited $status after $((SECONDS - t0)) s"
fi
echo "bare-install: $what: exit $status, $((SECONDS - started)) s in all"
exit "$status"
