//! Direct boot of a Linux bzImage in 64-bit mode (Documentation/x86/boot.rst): the kernel and
//! initrd go into guest RAM ([`loader`]), the zero page with the e820 map and the command line
//! are written ([`params`], [`cmdline`]), and the boot vCPU starts at the 64-bit entry point.

pub mod cmdline;
pub mod loader;
pub mod params;
