//! memtide's virtual machine monitor: builds a VM from a `VmConfig`, backs its RAM with pages
//! from the host pool (`memtide-allocator`), boots an unmodified Linux bzImage on KVM and runs
//! its devices (serial console, virtio-mmio, virtio-mem, virtio-balloon).
