//! The virtio-mem device (virtio 1.2 section 5.15, device id 24): a region of guest physical
//! memory split into blocks the guest driver plugs and unplugs on request, steered by the
//! device's `requested_size`. memtide backs a plugged block with pool memory through a
//! [`MemoryBackend`] the VMM implements.
//!
//! - [`device`]: the device state, configuration space, request handling and the
//!   [`crate::devices::virtio::VirtioDevice`] implementation.
//! - [`request`]: the wire format of requests and responses and the range checks.
//! - [`bitmap`]: the plugged state of every block.

pub mod bitmap;
pub mod device;
pub mod request;

#[cfg(test)]
mod tests;

pub use device::{
    BackendError, MemoryBackend, RequestCounts, VirtioMem, VirtioMemConfig, VirtioMemError,
    VirtioMemStats, VIRTIO_MEM_F_ACPI_PXM, VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
};
pub use request::{BlockRequest, BlockState, Request, Response};
