//! Loading the bzImage and the initrd into guest RAM, and the checks that run before any VM
//! exists (is it a bzImage, does it fit in the guest's memory).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{HIMEM_START, MMIO_GAP_START};
use crate::memory::GuestMemory;

/// "HdrS", the setup header magic (boot.rst).
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Offset of the setup header in the bzImage.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// The 64-bit entry point is 0x200 past the protected-mode kernel's load address (boot.rst,
/// "64-bit BOOT PROTOCOL").
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// `XLF_KERNEL_64`: the kernel has the legacy 64-bit entry point at 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Room the booted kernel needs beyond its decompressed image (page tables, slab, init).
const KERNEL_RUNTIME_SLACK: u64 = 32 << 20;

/// Errors about the guest kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel file cannot be opened or read.
    #[error("cannot read kernel {0}: {1}")]
    KernelUnreadable(PathBuf, std::io::Error),
    /// The file is not a bzImage (no HdrS, too old or not loaded high).
    #[error("{0} is not a bzImage with a 64-bit entry point (boot protocol >= 2.12)")]
    NotBzImage(PathBuf),
    /// The initrd cannot be opened or read.
    #[error("cannot read initrd {0}: {1}")]
    InitrdUnreadable(PathBuf, std::io::Error),
    /// Guest memory is too small for the kernel (and initrd).
    #[error("guest memory too small: node 0's first RAM range has {have} bytes, the kernel needs at least {need} bytes (decompressed kernel at {pref:#x} + {init_size} bytes init_size + {initrd} bytes initrd + 32 MiB)")]
    MemoryTooSmall {
        /// Bytes of low RAM the guest has.
        have: u64,
        /// Bytes needed.
        need: u64,
        /// Kernel's preferred load address.
        pref: u64,
        /// Kernel's init_size.
        init_size: u64,
        /// Initrd size.
        initrd: u64,
    },
    /// linux-loader failed to copy the kernel.
    #[error("loading the kernel: {0}")]
    Load(linux_loader::loader::Error),
    /// Copying the initrd failed.
    #[error("loading the initrd at {0:#x}: {1}")]
    InitrdLoad(u64, vm_memory::GuestMemoryError),
}

/// A guest kernel checked to be a bootable bzImage, and the optional initrd, both open.
pub struct BootImages {
    kernel: File,
    kernel_path: PathBuf,
    header: setup_header,
    initrd: Option<(File, PathBuf, u64)>,
}

impl std::fmt::Debug for BootImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootImages")
            .field("kernel", &self.kernel_path)
            .field("initrd", &self.initrd.as_ref().map(|i| &i.1))
            .finish()
    }
}

/// Where the kernel and initrd went.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The setup header to copy into the zero page.
    pub header: setup_header,
    /// 64-bit entry point.
    pub entry: u64,
    /// Initrd address and size.
    pub initrd: Option<(u64, u64)>,
}

impl BootImages {
    /// Opens the kernel (and initrd) and checks the kernel is a bzImage with a 64-bit entry.
    pub fn open(kernel: &Path, initrd: Option<&Path>) -> Result<Self, LoaderError> {
        let unreadable = |e| LoaderError::KernelUnreadable(kernel.to_path_buf(), e);
        let mut file = File::open(kernel).map_err(unreadable)?;
        if file.metadata().map_err(unreadable)?.is_dir() {
            return Err(unreadable(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        file.seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
            .map_err(unreadable)?;
        let mut header = setup_header::default();
        // SAFETY: `setup_header` is a packed plain-old-data struct; any bytes are a valid value.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                (&mut header as *mut setup_header).cast::<u8>(),
                std::mem::size_of::<setup_header>(),
            )
        };
        if file.read_exact(bytes).is_err() {
            return Err(LoaderError::NotBzImage(kernel.to_path_buf()));
        }
        let (magic, version, loadflags, xlf) = (
            header.header,
            header.version,
            header.loadflags,
            header.xloadflags,
        );
        if magic != HDRS_MAGIC || version < 0x020c || loadflags & 1 == 0 || xlf & XLF_KERNEL_64 == 0
        {
            return Err(LoaderError::NotBzImage(kernel.to_path_buf()));
        }
        let initrd = match initrd {
            None => None,
            Some(p) => {
                let bad = |e| LoaderError::InitrdUnreadable(p.to_path_buf(), e);
                let f = File::open(p).map_err(bad)?;
                let meta = f.metadata().map_err(bad)?;
                if meta.is_dir() {
                    return Err(bad(std::io::Error::from_raw_os_error(libc::EISDIR)));
                }
                Some((f, p.to_path_buf(), meta.len()))
            }
        };
        Ok(BootImages {
            kernel: file,
            kernel_path: kernel.to_path_buf(),
            header,
            initrd,
        })
    }

    /// Bytes of low RAM (the first RAM range, from address 0) this kernel needs.
    pub fn min_low_memory(&self) -> u64 {
        let pref = self.header.pref_address.max(HIMEM_START);
        let init_size = u64::from(self.header.init_size);
        let initrd = self.initrd.as_ref().map_or(0, |i| i.2);
        pref + init_size + crate::layout::align_up(initrd, 4096) + KERNEL_RUNTIME_SLACK
    }

    /// Fails unless a first RAM range of `low_ram` bytes holds this kernel.
    pub fn check_fits(&self, low_ram: u64) -> Result<(), LoaderError> {
        let need = self.min_low_memory();
        if low_ram < need {
            return Err(LoaderError::MemoryTooSmall {
                have: low_ram,
                need,
                pref: self.header.pref_address,
                init_size: u64::from(self.header.init_size),
                initrd: self.initrd.as_ref().map_or(0, |i| i.2),
            });
        }
        Ok(())
    }

    /// Copies the kernel to `code32_start` (1 MiB) and the initrd to the top of low RAM
    /// (below `low_ram_end`, the MMIO hole and `initrd_addr_max`).
    pub fn load(
        &mut self,
        mem: &GuestMemory,
        low_ram_end: u64,
    ) -> Result<LoadedKernel, LoaderError> {
        self.kernel
            .seek(SeekFrom::Start(0))
            .map_err(|e| LoaderError::KernelUnreadable(self.kernel_path.clone(), e))?;
        let res = BzImage::load(mem, None, &mut self.kernel, Some(GuestAddress(HIMEM_START)))
            .map_err(LoaderError::Load)?;
        let header = res.setup_header.unwrap_or(self.header);
        let entry = res.kernel_load.0 + ENTRY_64_OFFSET;
        let initrd = match self.initrd.as_mut() {
            None => None,
            Some((file, path, size)) => {
                let max = u64::from(header.initrd_addr_max).max(0x37ff_ffff);
                let top = low_ram_end.min(MMIO_GAP_START).min(max + 1);
                let addr = top.saturating_sub(*size) & !0xfff;
                if addr < res.kernel_end {
                    return Err(LoaderError::MemoryTooSmall {
                        have: low_ram_end,
                        need: res.kernel_end + *size,
                        pref: header.pref_address,
                        init_size: u64::from(header.init_size),
                        initrd: *size,
                    });
                }
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| LoaderError::InitrdUnreadable(path.clone(), e))?;
                let len = usize::try_from(*size).map_err(|_| {
                    LoaderError::InitrdUnreadable(
                        path.clone(),
                        std::io::Error::from_raw_os_error(libc::EFBIG),
                    )
                })?;
                mem.read_exact_volatile_from(GuestAddress(addr), file, len)
                    .map_err(|e| LoaderError::InitrdLoad(addr, e))?;
                Some((addr, *size))
            }
        };
        Ok(LoadedKernel {
            header,
            entry,
            initrd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_kernel_is_reported() {
        let err = BootImages::open(Path::new("/nonexistent/vmlinuz"), None).expect_err("missing");
        assert!(matches!(err, LoaderError::KernelUnreadable(..)));
        assert!(err.to_string().contains("/nonexistent/vmlinuz"));
    }

    #[test]
    fn non_bzimage_is_rejected() {
        let dir = std::env::temp_dir().join(format!("memtide-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let p = dir.join("notakernel");
        std::fs::write(&p, vec![0u8; 8192]).expect("write");
        let err = BootImages::open(&p, None).expect_err("not a bzImage");
        assert!(matches!(err, LoaderError::NotBzImage(_)));
        let err = BootImages::open(&dir, None).expect_err("a directory");
        assert!(matches!(err, LoaderError::KernelUnreadable(..)));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
