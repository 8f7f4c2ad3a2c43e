//! The virtio-mem request queue's wire format (virtio 1.2 section 5.15.6; Linux
//! `include/uapi/linux/virtio_mem.h`) and the range checks every block request passes.

/// `VIRTIO_MEM_REQ_PLUG`.
pub const VIRTIO_MEM_REQ_PLUG: u16 = 0;
/// `VIRTIO_MEM_REQ_UNPLUG`.
pub const VIRTIO_MEM_REQ_UNPLUG: u16 = 1;
/// `VIRTIO_MEM_REQ_UNPLUG_ALL`.
pub const VIRTIO_MEM_REQ_UNPLUG_ALL: u16 = 2;
/// `VIRTIO_MEM_REQ_STATE`.
pub const VIRTIO_MEM_REQ_STATE: u16 = 3;

/// `VIRTIO_MEM_RESP_ACK`.
pub const VIRTIO_MEM_RESP_ACK: u16 = 0;
/// `VIRTIO_MEM_RESP_NACK`.
pub const VIRTIO_MEM_RESP_NACK: u16 = 1;
/// `VIRTIO_MEM_RESP_BUSY`.
pub const VIRTIO_MEM_RESP_BUSY: u16 = 2;
/// `VIRTIO_MEM_RESP_ERROR`.
pub const VIRTIO_MEM_RESP_ERROR: u16 = 3;

/// `VIRTIO_MEM_STATE_PLUGGED`.
pub const VIRTIO_MEM_STATE_PLUGGED: u16 = 0;
/// `VIRTIO_MEM_STATE_UNPLUGGED`.
pub const VIRTIO_MEM_STATE_UNPLUGGED: u16 = 1;
/// `VIRTIO_MEM_STATE_MIXED`.
pub const VIRTIO_MEM_STATE_MIXED: u16 = 2;

/// `sizeof(struct virtio_mem_req)`: type, 3 padding words, addr, nb_blocks, 3 padding words.
pub const REQUEST_SIZE: usize = 24;
/// `sizeof(struct virtio_mem_resp)`: type, 3 padding words, state.
pub const RESPONSE_SIZE: usize = 10;

/// The request-specific data of PLUG, UNPLUG and STATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRequest {
    /// Guest physical address of the first block.
    pub addr: u64,
    /// Number of consecutive blocks.
    pub nb_blocks: u16,
}

/// A parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Plug blocks that are unplugged.
    Plug(BlockRequest),
    /// Unplug blocks that are plugged.
    Unplug(BlockRequest),
    /// Unplug every plugged block.
    UnplugAll,
    /// Report whether blocks are plugged.
    State(BlockRequest),
}

/// A request that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The type field names no known request.
    #[error("unknown virtio-mem request type {0}")]
    UnknownType(u16),
}

impl Request {
    /// Parses a little-endian `struct virtio_mem_req`; padding is ignored, as the spec says.
    pub fn parse(raw: &[u8; REQUEST_SIZE]) -> Result<Self, RequestError> {
        let ty = u16::from_le_bytes([raw[0], raw[1]]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&raw[8..16]);
        let block = BlockRequest {
            addr: u64::from_le_bytes(addr),
            nb_blocks: u16::from_le_bytes([raw[16], raw[17]]),
        };
        match ty {
            VIRTIO_MEM_REQ_PLUG => Ok(Request::Plug(block)),
            VIRTIO_MEM_REQ_UNPLUG => Ok(Request::Unplug(block)),
            VIRTIO_MEM_REQ_UNPLUG_ALL => Ok(Request::UnplugAll),
            VIRTIO_MEM_REQ_STATE => Ok(Request::State(block)),
            other => Err(RequestError::UnknownType(other)),
        }
    }

    /// The little-endian wire form (padding zero), as a driver writes it.
    pub fn to_bytes(self) -> [u8; REQUEST_SIZE] {
        let (ty, block) = match self {
            Request::Plug(b) => (VIRTIO_MEM_REQ_PLUG, Some(b)),
            Request::Unplug(b) => (VIRTIO_MEM_REQ_UNPLUG, Some(b)),
            Request::UnplugAll => (VIRTIO_MEM_REQ_UNPLUG_ALL, None),
            Request::State(b) => (VIRTIO_MEM_REQ_STATE, Some(b)),
        };
        let mut raw = [0u8; REQUEST_SIZE];
        raw[..2].copy_from_slice(&ty.to_le_bytes());
        if let Some(b) = block {
            raw[8..16].copy_from_slice(&b.addr.to_le_bytes());
            raw[16..18].copy_from_slice(&b.nb_blocks.to_le_bytes());
        }
        raw
    }
}

/// What a STATE request reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Every block is plugged.
    Plugged,
    /// Every block is unplugged.
    Unplugged,
    /// Some are plugged, some are not.
    Mixed,
}

/// The device's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Done (PLUG, UNPLUG, UNPLUG_ALL).
    Ack,
    /// Done, with the state of the blocks (STATE).
    AckState(BlockState),
    /// Refused: plugging would exceed `requested_size` (PLUG).
    Nack,
    /// Cannot be done now, retry later (PLUG, UNPLUG, UNPLUG_ALL).
    Busy,
    /// Bad request: alignment, range, block state, unknown type.
    Error,
}

impl Response {
    /// The response type field.
    pub fn kind(self) -> u16 {
        match self {
            Response::Ack | Response::AckState(_) => VIRTIO_MEM_RESP_ACK,
            Response::Nack => VIRTIO_MEM_RESP_NACK,
            Response::Busy => VIRTIO_MEM_RESP_BUSY,
            Response::Error => VIRTIO_MEM_RESP_ERROR,
        }
    }

    /// The little-endian `struct virtio_mem_resp`.
    pub fn to_bytes(self) -> [u8; RESPONSE_SIZE] {
        let mut raw = [0u8; RESPONSE_SIZE];
        raw[..2].copy_from_slice(&self.kind().to_le_bytes());
        if let Response::AckState(state) = self {
            let s = match state {
                BlockState::Plugged => VIRTIO_MEM_STATE_PLUGGED,
                BlockState::Unplugged => VIRTIO_MEM_STATE_UNPLUGGED,
                BlockState::Mixed => VIRTIO_MEM_STATE_MIXED,
            };
            raw[8..10].copy_from_slice(&s.to_le_bytes());
        }
        raw
    }
}

/// Blocks `first..first + count` of the device region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    /// Index of the first block.
    pub first: usize,
    /// Number of blocks (at least 1).
    pub count: usize,
}

/// Why a block request's range is refused (the device answers ERROR).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    /// `nb_blocks` is zero.
    #[error("request for zero blocks at {0:#x}")]
    NoBlocks(u64),
    /// `addr` is not a multiple of the block size.
    #[error("address {0:#x} is not aligned to the block size {1:#x}")]
    Unaligned(u64, u64),
    /// The blocks are not all inside the usable region.
    #[error("{1} blocks at {0:#x} are not inside the usable region")]
    OutsideUsable(u64, u16),
}

/// Where block requests may point: the device region and its usable part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsableRegion {
    /// Guest physical start of the device region.
    pub addr: u64,
    /// Block size (a power of two).
    pub block_size: u64,
    /// Bytes from `addr` that requests may cover.
    pub usable_size: u64,
}

impl UsableRegion {
    /// Checks a PLUG/UNPLUG/STATE range (virtio 1.2 section 5.15.6.{2,3,5}: aligned, at least one
    /// block, every block inside the usable region) and returns its blocks.
    pub fn blocks(&self, req: BlockRequest) -> Result<BlockRange, RangeError> {
        if req.nb_blocks == 0 {
            return Err(RangeError::NoBlocks(req.addr));
        }
        if !req.addr.is_multiple_of(self.block_size) {
            return Err(RangeError::Unaligned(req.addr, self.block_size));
        }
        let outside = RangeError::OutsideUsable(req.addr, req.nb_blocks);
        let offset = req.addr.checked_sub(self.addr).ok_or(outside.clone())?;
        let size = u64::from(req.nb_blocks)
            .checked_mul(self.block_size)
            .ok_or(outside.clone())?;
        let end = offset.checked_add(size).ok_or(outside.clone())?;
        if end > self.usable_size {
            return Err(outside);
        }
        let first = usize::try_from(offset / self.block_size).map_err(|_| outside)?;
        Ok(BlockRange {
            first,
            count: usize::from(req.nb_blocks),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn region() -> UsableRegion {
        UsableRegion {
            addr: 4096 * MIB,
            block_size: 2 * MIB,
            usable_size: 256 * MIB,
        }
    }

    #[test]
    fn parse_each_type_and_ignore_padding() {
        let mut raw = Request::Plug(BlockRequest {
            addr: 0x1_0020_0000,
            nb_blocks: 3,
        })
        .to_bytes();
        // Padding in the header and after nb_blocks must not matter.
        raw[2..8].fill(0xaa);
        raw[18..24].fill(0x55);
        assert_eq!(
            Request::parse(&raw),
            Ok(Request::Plug(BlockRequest {
                addr: 0x1_0020_0000,
                nb_blocks: 3
            }))
        );
        raw[0] = 1;
        assert!(matches!(Request::parse(&raw), Ok(Request::Unplug(_))));
        raw[0] = 2;
        assert_eq!(Request::parse(&raw), Ok(Request::UnplugAll));
        raw[0] = 3;
        assert!(matches!(Request::parse(&raw), Ok(Request::State(_))));
        raw[0] = 4;
        assert_eq!(Request::parse(&raw), Err(RequestError::UnknownType(4)));
        raw[0] = 0;
        raw[1] = 1;
        assert_eq!(Request::parse(&raw), Err(RequestError::UnknownType(256)));
    }

    #[test]
    fn response_bytes() {
        assert_eq!(Response::Ack.to_bytes(), [0; 10]);
        assert_eq!(Response::Nack.to_bytes()[..2], [1, 0]);
        assert_eq!(Response::Busy.to_bytes()[..2], [2, 0]);
        assert_eq!(Response::Error.to_bytes()[..2], [3, 0]);
        let s = Response::AckState(BlockState::Mixed).to_bytes();
        assert_eq!(s, [0, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
        assert_eq!(Response::AckState(BlockState::Unplugged).to_bytes()[8], 1);
        assert_eq!(Response::AckState(BlockState::Plugged).to_bytes()[8], 0);
    }

    #[test]
    fn range_checks() {
        let r = region();
        let req = |addr, nb_blocks| BlockRequest { addr, nb_blocks };
        assert_eq!(
            r.blocks(req(r.addr, 1)),
            Ok(BlockRange { first: 0, count: 1 })
        );
        assert_eq!(
            r.blocks(req(r.addr + 254 * MIB, 1)),
            Ok(BlockRange {
                first: 127,
                count: 1
            })
        );
        assert_eq!(
            r.blocks(req(r.addr, 128)),
            Ok(BlockRange {
                first: 0,
                count: 128
            })
        );
        assert_eq!(
            r.blocks(req(r.addr, 129)),
            Err(RangeError::OutsideUsable(r.addr, 129))
        );
        assert_eq!(
            r.blocks(req(r.addr + 256 * MIB, 1)),
            Err(RangeError::OutsideUsable(r.addr + 256 * MIB, 1))
        );
        assert_eq!(
            r.blocks(req(r.addr - 2 * MIB, 1)),
            Err(RangeError::OutsideUsable(r.addr - 2 * MIB, 1))
        );
        assert_eq!(r.blocks(req(r.addr, 0)), Err(RangeError::NoBlocks(r.addr)));
        assert_eq!(
            r.blocks(req(r.addr + 4096, 1)),
            Err(RangeError::Unaligned(r.addr + 4096, 2 * MIB))
        );
        // An address near the top of the address space must not wrap around.
        let top = u64::MAX - (2 * MIB - 1);
        assert_eq!(
            r.blocks(req(top, u16::MAX)),
            Err(RangeError::OutsideUsable(top, u16::MAX))
        );
    }

    proptest! {
        #[test]
        fn accepted_ranges_lie_inside_the_usable_region(addr in any::<u64>(), nb in any::<u16>(), shift in 0u32..8) {
            let r = region();
            let addr = if shift == 0 { addr } else { r.addr + (addr % (512 * MIB)) / (2 * MIB) * (2 * MIB) };
            if let Ok(b) = r.blocks(BlockRequest { addr, nb_blocks: nb }) {
                prop_assert!(b.count >= 1);
                let start = r.addr + b.first as u64 * r.block_size;
                prop_assert_eq!(start, addr);
                prop_assert!(start + b.count as u64 * r.block_size <= r.addr + r.usable_size);
            }
        }

        #[test]
        fn parse_roundtrips(ty in 0u16..4, addr in any::<u64>(), nb in any::<u16>()) {
            let b = BlockRequest { addr, nb_blocks: nb };
            let req = match ty { 0 => Request::Plug(b), 1 => Request::Unplug(b), 2 => Request::UnplugAll, _ => Request::State(b) };
            prop_assert_eq!(Request::parse(&req.to_bytes()), Ok(req));
        }
    }
}
