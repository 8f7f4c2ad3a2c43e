#!/usr/bin/env bash
# Installs the Debian packages memtide's tests and demo need, once: qemu-system-x86 (the
# emulated KVM host and the reference VMM), busybox-static and cpio (initramfs images),
# libc6-dev (static glibc for the guest agent); and makes sure apt knows the current Debian
# cloud kernel, which the test harness fetches with `apt-get download`.
# Idempotent: does nothing when everything is present.
set -euo pipefail
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
if [ ${#need[@]} -gt 0 ] || ! apt-cache policy linux-image-cloud-amd64 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  $SUDO apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
