//! Balloon targets in the two sizes people think in: how much memory the guest should end up
//! with ("guest size"), and how much the balloon should hold ("balloon size"). The device's
//! `num_pages` is the balloon size in 4 KiB pages.

use super::pages::BALLOON_PAGE_SIZE;

/// An impossible balloon target.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// The size is not a multiple of the 4 KiB balloon page.
    #[error("size {0:#x} is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// The guest size exceeds the guest's RAM (a balloon cannot give memory the guest does
    /// not have).
    #[error("guest size {0:#x} exceeds the guest's RAM {1:#x}")]
    GuestSizeTooLarge(u64, u64),
    /// The balloon size exceeds the guest's RAM.
    #[error("balloon size {0:#x} exceeds the guest's RAM {1:#x}")]
    BalloonSizeTooLarge(u64, u64),
    /// The balloon size needs more pages than the 32-bit `num_pages` holds.
    #[error("balloon size {0:#x} exceeds 2^32 pages of 4 KiB")]
    TooManyPages(u64),
}

fn check_aligned(bytes: u64) -> Result<(), TargetError> {
    if bytes.is_multiple_of(BALLOON_PAGE_SIZE) {
        Ok(())
    } else {
        Err(TargetError::Unaligned(bytes))
    }
}

/// The balloon size that leaves the guest `guest_size` bytes of its `guest_ram` bytes.
pub fn balloon_size_for_guest_size(guest_ram: u64, guest_size: u64) -> Result<u64, TargetError> {
    check_aligned(guest_size)?;
    guest_ram
        .checked_sub(guest_size)
        .ok_or(TargetError::GuestSizeTooLarge(guest_size, guest_ram))
}

/// The guest size (what the guest keeps of its `guest_ram` bytes) with a balloon of
/// `balloon_size` bytes.
pub fn guest_size_for_balloon_size(guest_ram: u64, balloon_size: u64) -> Result<u64, TargetError> {
    check_aligned(balloon_size)?;
    guest_ram
        .checked_sub(balloon_size)
        .ok_or(TargetError::BalloonSizeTooLarge(balloon_size, guest_ram))
}

/// `num_pages` for a balloon of `balloon_size` bytes.
pub fn pages_for_balloon_size(balloon_size: u64) -> Result<u32, TargetError> {
    check_aligned(balloon_size)?;
    u32::try_from(balloon_size / BALLOON_PAGE_SIZE)
        .map_err(|_| TargetError::TooManyPages(balloon_size))
}

/// The balloon size in bytes of `pages` balloon pages.
pub fn balloon_size_for_pages(pages: u32) -> u64 {
    u64::from(pages) * BALLOON_PAGE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn conversions_and_their_errors() {
        assert_eq!(
            balloon_size_for_guest_size(2 * GIB, GIB + 4096),
            Ok(GIB - 4096)
        );
        assert_eq!(balloon_size_for_guest_size(2 * GIB, 2 * GIB), Ok(0));
        assert_eq!(
            balloon_size_for_guest_size(2 * GIB, 3 * GIB),
            Err(TargetError::GuestSizeTooLarge(3 * GIB, 2 * GIB))
        );
        assert_eq!(
            balloon_size_for_guest_size(2 * GIB, 100),
            Err(TargetError::Unaligned(100))
        );
        assert_eq!(
            guest_size_for_balloon_size(2 * GIB, GIB / 4),
            Ok(GIB * 7 / 4)
        );
        assert_eq!(
            guest_size_for_balloon_size(GIB, 2 * GIB),
            Err(TargetError::BalloonSizeTooLarge(2 * GIB, GIB))
        );
        assert_eq!(pages_for_balloon_size(256 << 20), Ok(65536));
        assert_eq!(
            pages_for_balloon_size(16 << 40),
            Err(TargetError::TooManyPages(16 << 40))
        );
        assert_eq!(
            pages_for_balloon_size(4095),
            Err(TargetError::Unaligned(4095))
        );
        assert_eq!(balloon_size_for_pages(u32::MAX), (16 << 40) - 4096);
    }

    #[test]
    fn the_two_sizes_are_inverse() {
        for ram in [GIB, 3 * GIB + 8192] {
            for size in [0, 4096, GIB / 2, ram] {
                let b = balloon_size_for_guest_size(ram, size).expect("valid");
                assert_eq!(guest_size_for_balloon_size(ram, b), Ok(size));
            }
        }
    }
}
