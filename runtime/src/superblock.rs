//! The superblocks of SquashFS and ext2/3/4 images, read from their first bytes: what
//! tells the formats apart and what `ferry inspect` shows. Pure code over bytes; no
//! panics on any input.

/// Bytes from the start of an image that hold both superblocks (ext's ends at 2048).
pub const PROBE_LEN: usize = 2048;

const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";
const EXT_SUPERBLOCK: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Squashfs {
    pub version: String,
    pub compression: String,
    pub block_size: u32,
    pub inodes: u32,
    pub bytes_used: u64,
    pub created_unix: u32,
}

pub fn is_squashfs(head: &[u8]) -> bool {
    head.get(..4) == Some(SQUASHFS_MAGIC)
}

/// The SquashFS superblock (version 4 layout) at the start of `head`.
pub fn squashfs(head: &[u8]) -> Option<Squashfs> {
    if !is_squashfs(head) {
        return None;
    }
    let compression = match u16_at(head, 20)? {
        1 => "gzip",
        2 => "lzma",
        3 => "lzo",
        4 => "xz",
        5 => "lz4",
        6 => "zstd",
        _ => "unknown",
    };
    Some(Squashfs {
        version: format!("{}.{}", u16_at(head, 28)?, u16_at(head, 30)?),
        compression: compression.to_string(),
        block_size: u32_at(head, 12)?,
        inodes: u32_at(head, 4)?,
        bytes_used: u64_at(head, 40)?,
        created_unix: u32_at(head, 8)?,
    })
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Ext {
    /// "ext2", "ext3" or "ext4", from the feature flags (as blkid tells them apart).
    pub kind: String,
    pub block_size: u64,
    pub blocks: u64,
    pub label: String,
    pub uuid: String,
    /// The journal needs replaying (unclean unmount); ferry mounts without replaying.
    pub needs_recovery: bool,
}

pub fn is_ext(head: &[u8]) -> bool {
    u16_at(head, EXT_SUPERBLOCK + 56) == Some(EXT_MAGIC)
}

/// The ext2/3/4 superblock, 1024 bytes into `head`.
pub fn ext(head: &[u8]) -> Option<Ext> {
    if !is_ext(head) {
        return None;
    }
    let sb = head.get(EXT_SUPERBLOCK..EXT_SUPERBLOCK + 1024)?;
    let compat = u32_at(sb, 0x5C)?;
    let incompat = u32_at(sb, 0x60)?;
    const HAS_JOURNAL: u32 = 0x4;
    const INCOMPAT_RECOVER: u32 = 0x4;
    const INCOMPAT_64BIT: u32 = 0x80;
    // Anything beyond what ext3 knows (filetype, recover, journal device, meta_bg)
    // needs the ext4 driver.
    const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x8 | 0x10;
    let kind = if incompat & !EXT3_INCOMPAT != 0 {
        "ext4"
    } else if compat & HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    let log_block = u32_at(sb, 0x18)?;
    let block_size = 1024u64.checked_shl(log_block.min(32)).unwrap_or(0);
    let mut blocks = u32_at(sb, 0x4)? as u64;
    if incompat & INCOMPAT_64BIT != 0 {
        blocks |= (u32_at(sb, 0x150)? as u64) << 32;
    }
    let label = sb.get(0x78..0x88)?;
    let end = label.iter().position(|&c| c == 0).unwrap_or(label.len());
    Some(Ext {
        kind: kind.to_string(),
        block_size,
        blocks,
        label: String::from_utf8_lossy(&label[..end]).into_owned(),
        uuid: sb
            .get(0x68..0x78)?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        needs_recovery: incompat & INCOMPAT_RECOVER != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_foreign_input_is_none() {
        for len in 0..PROBE_LEN {
            let zeros = vec![0u8; len];
            assert_eq!(squashfs(&zeros), None);
            assert_eq!(ext(&zeros), None);
        }
        let mut sq = b"hsqs".to_vec();
        for len in 4..64 {
            sq.resize(len, 0xff);
            let _ = squashfs(&sq);
        }
        let mut e = vec![0xffu8; PROBE_LEN];
        e[1024 + 56..1024 + 58].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        for len in 0..PROBE_LEN {
            let _ = ext(&e[..len]);
        }
        assert_eq!(ext(&e).unwrap().kind, "ext4");
    }
}
