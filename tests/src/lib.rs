//! memtide's integration-test ground: builds the guest image (Debian kernel, initramfs with
//! busybox, virtio modules and the guest agent), selects a KVM host that can boot Linux
//! (hardware KVM, or the emulated KVM host under QEMU TCG) and drives guests in it.
