//! The Singularity Image Format (SIF), read-only: the global header, the descriptor
//! table, and which descriptor holds the container's root filesystem.
//!
//! Pure code over bytes (no I/O, no panics on any input) so that it can be fuzzed: the
//! caller reads the first [`HEADER_LEN`] bytes, asks [`table_end`] how much more the
//! descriptor table needs, reads that, and calls [`parse`] with the file's size. Every
//! offset and size is checked against that size.
//!
//! Layout (all integers little-endian): a 128-byte header (launch script, magic
//! `SIF_MAGIC\0` at 32, version at 42, architecture at 45, UUID at 48, times at 64/72,
//! free/total descriptor counts at 80/88, descriptor table offset/size at 96/104, data
//! offset/size at 112/120), then 585-byte descriptors (data type at 0, used at 4, ids
//! at 5/9/13, data offset/size at 17/25, padded size at 33, times at 41/49, uid/gid at
//! 57/65, name at 73, 384 bytes of type-specific data at 201).

use std::fmt;

pub const HEADER_LEN: usize = 128;
pub const DESCRIPTOR_LEN: usize = 585;
const MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
const MAGIC_AT: usize = 32;
/// More descriptors than any real SIF has (tools create 48 slots); bounds what is read.
pub const MAX_DESCRIPTORS: u64 = 4096;

pub const DATA_PARTITION: u32 = 0x4004;
pub const DATA_SIGNATURE: u32 = 0x4005;

pub const FS_SQUASHFS: u32 = 1;
pub const FS_EXT3: u32 = 2;
pub const FS_ENCRYPTED_SQUASHFS: u32 = 5;
pub const PART_PRIMARY_SYSTEM: u32 = 2;

/// Why a file is not a usable SIF. `Display` is the reason only; the caller names the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SifError {
    NotSif,
    Truncated(String),
    Corrupt(String),
}

impl fmt::Display for SifError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SifError::NotSif => f.write_str("no SIF magic"),
            SifError::Truncated(why) => write!(f, "truncated: {why}"),
            SifError::Corrupt(why) => write!(f, "corrupt: {why}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub launch: String,
    pub version: String,
    pub arch: String,
    pub uuid: String,
    pub created_unix: i64,
    pub modified_unix: i64,
    pub descriptors_free: u64,
    pub descriptors_total: u64,
    pub descriptors_offset: u64,
    pub descriptors_size: u64,
    pub data_offset: u64,
    pub data_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Extra {
    Partition { fs: u32, part: u32, arch: String },
    Signature { hash: u32, entity: String },
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Descriptor {
    pub data_type: u32,
    pub id: u32,
    pub group_id: u32,
    pub linked_id: u32,
    pub offset: u64,
    pub size: u64,
    pub name: String,
    pub extra: Extra,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Sif {
    pub header: Header,
    /// The used descriptors, in table order.
    pub descriptors: Vec<Descriptor>,
}

/// What the root filesystem of a SIF is, or why it cannot be run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    Squashfs { offset: u64, size: u64 },
    Encrypted,
    Ext3,
    OtherFs(u32),
    Missing,
}

/// Little-endian readers that return None past the end instead of panicking.
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn i64_at(b: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A non-negative 64-bit field; negative values are corruption.
fn u64_field(b: &[u8], at: usize, what: &str) -> Result<u64, SifError> {
    let v = i64_at(b, at).ok_or_else(|| SifError::Truncated(format!("{what} cut off")))?;
    u64::try_from(v).map_err(|_| SifError::Corrupt(format!("negative {what} ({v})")))
}

/// A NUL-padded text field, printable ASCII only (the rest becomes '?').
fn text_at(b: &[u8], at: usize, len: usize) -> String {
    let field = b.get(at..at + len).unwrap_or_default();
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    field[..end]
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True when `head` starts like a SIF (the magic at byte 32).
pub fn is_sif(head: &[u8]) -> bool {
    head.get(MAGIC_AT..MAGIC_AT + MAGIC.len()) == Some(MAGIC)
}

/// Where the descriptor table ends: how many bytes from the start of the file
/// [`parse`] needs. Checked against `file_size`.
pub fn table_end(head: &[u8], file_size: u64) -> Result<u64, SifError> {
    if !is_sif(head) {
        return Err(SifError::NotSif);
    }
    if head.len() < HEADER_LEN || file_size < HEADER_LEN as u64 {
        return Err(SifError::Truncated(format!(
            "shorter than the {HEADER_LEN}-byte header"
        )));
    }
    let total = u64_field(head, 88, "descriptor count")?;
    let offset = u64_field(head, 96, "descriptor table offset")?;
    if total > MAX_DESCRIPTORS {
        return Err(SifError::Corrupt(format!(
            "{total} descriptors (at most {MAX_DESCRIPTORS} expected)"
        )));
    }
    if offset < HEADER_LEN as u64 {
        return Err(SifError::Corrupt(format!(
            "descriptor table at {offset}, inside the header"
        )));
    }
    let end = offset
        .checked_add(total * DESCRIPTOR_LEN as u64)
        .ok_or_else(|| SifError::Corrupt("descriptor table offset overflows".into()))?;
    if end > file_size {
        return Err(SifError::Truncated(format!(
            "descriptor table ends at byte {end}, past the end of the file ({file_size} bytes)"
        )));
    }
    Ok(end)
}

/// Parses a SIF from its first bytes (at least up to [`table_end`]) and the size of the
/// whole file. Every used descriptor's data must lie inside the file.
pub fn parse(bytes: &[u8], file_size: u64) -> Result<Sif, SifError> {
    let end = table_end(bytes, file_size)?;
    if (bytes.len() as u64) < end {
        return Err(SifError::Truncated(format!(
            "descriptor table needs {end} bytes, have {}",
            bytes.len()
        )));
    }
    let header = Header {
        launch: text_at(bytes, 0, 32).trim_end().to_string(),
        version: text_at(bytes, 42, 3),
        arch: text_at(bytes, 45, 3),
        uuid: hex(&bytes[48..64]),
        created_unix: i64_at(bytes, 64).unwrap_or_default(),
        modified_unix: i64_at(bytes, 72).unwrap_or_default(),
        descriptors_free: u64_field(bytes, 80, "free descriptor count")?,
        descriptors_total: u64_field(bytes, 88, "descriptor count")?,
        descriptors_offset: u64_field(bytes, 96, "descriptor table offset")?,
        descriptors_size: u64_field(bytes, 104, "descriptor table size")?,
        data_offset: u64_field(bytes, 112, "data offset")?,
        data_size: u64_field(bytes, 120, "data size")?,
    };
    let mut descriptors = Vec::new();
    for i in 0..header.descriptors_total {
        let start = (header.descriptors_offset + i * DESCRIPTOR_LEN as u64) as usize;
        let d = &bytes[start..start + DESCRIPTOR_LEN];
        if d[4] == 0 {
            continue; // a free slot
        }
        let data_type = u32_at(d, 0).unwrap_or_default();
        let offset = u64_field(d, 17, "descriptor data offset")?;
        let size = u64_field(d, 25, "descriptor data size")?;
        let id = u32_at(d, 5).unwrap_or_default();
        match offset.checked_add(size) {
            Some(data_end) if data_end <= file_size => {}
            _ => {
                return Err(SifError::Truncated(format!(
                    "descriptor {id} data at {offset}+{size} runs past the end of the file ({file_size} bytes)"
                )))
            }
        }
        let extra_at = 201;
        let extra = match data_type {
            DATA_PARTITION => Extra::Partition {
                fs: u32_at(d, extra_at).unwrap_or_default(),
                part: u32_at(d, extra_at + 4).unwrap_or_default(),
                arch: text_at(d, extra_at + 8, 3),
            },
            DATA_SIGNATURE => Extra::Signature {
                hash: u32_at(d, extra_at).unwrap_or_default(),
                entity: hex(&d[extra_at + 4..extra_at + 24]),
            },
            _ => Extra::Other,
        };
        descriptors.push(Descriptor {
            data_type,
            id,
            group_id: u32_at(d, 9).unwrap_or_default(),
            linked_id: u32_at(d, 13).unwrap_or_default(),
            offset,
            size,
            name: text_at(d, 73, 128),
            extra,
        });
    }
    Ok(Sif {
        header,
        descriptors,
    })
}

impl Sif {
    /// The primary system partition (the container's root filesystem), as Apptainer
    /// picks it: the first used partition descriptor of type "primary system".
    pub fn root(&self) -> Root {
        let primary = self.descriptors.iter().find_map(|d| match d.extra {
            Extra::Partition { fs, part, .. } if part == PART_PRIMARY_SYSTEM => Some((d, fs)),
            _ => None,
        });
        match primary {
            None => Root::Missing,
            Some((d, FS_SQUASHFS)) => Root::Squashfs {
                offset: d.offset,
                size: d.size,
            },
            Some((_, FS_ENCRYPTED_SQUASHFS)) => Root::Encrypted,
            Some((_, FS_EXT3)) => Root::Ext3,
            Some((_, fs)) => Root::OtherFs(fs),
        }
    }

    pub fn is_signed(&self) -> bool {
        self.descriptors
            .iter()
            .any(|d| d.data_type == DATA_SIGNATURE)
    }
}

pub fn data_type_name(t: u32) -> &'static str {
    match t {
        0x4001 => "definition file",
        0x4002 => "environment",
        0x4003 => "labels",
        DATA_PARTITION => "partition",
        DATA_SIGNATURE => "signature",
        0x4006 => "generic JSON",
        0x4007 => "generic",
        0x4008 => "crypto message",
        0x4009 => "SBOM",
        0x400a => "OCI root index",
        0x400b => "OCI blob",
        _ => "unknown",
    }
}

pub fn fs_name(fs: u32) -> &'static str {
    match fs {
        FS_SQUASHFS => "squashfs",
        FS_EXT3 => "ext3",
        3 => "immutable object",
        4 => "raw",
        FS_ENCRYPTED_SQUASHFS => "encrypted squashfs",
        _ => "unknown",
    }
}

pub fn part_name(part: u32) -> &'static str {
    match part {
        1 => "system",
        PART_PRIMARY_SYSTEM => "primary system",
        3 => "data",
        4 => "overlay",
        _ => "unknown",
    }
}

/// The architecture codes of the header and partitions ("02" is amd64).
pub fn arch_name(code: &str) -> &'static str {
    match code {
        "01" => "386",
        "02" => "amd64",
        "03" => "arm",
        "04" => "arm64",
        "05" => "ppc64",
        "06" => "ppc64le",
        "07" => "mips",
        "08" => "mipsle",
        "09" => "mips64",
        "10" => "mips64le",
        "11" => "s390x",
        "12" => "riscv64",
        _ => "unknown",
    }
}

pub fn hash_name(hash: u32) -> &'static str {
    match hash {
        1 => "sha256",
        2 => "sha384",
        3 => "sha512",
        4 => "blake2s",
        5 => "blake2b",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIF image in memory: header, `slots` descriptor slots, then the data blobs.
    /// Each entry is (data type, extra bytes, data).
    fn build(entries: &[(u32, Vec<u8>, Vec<u8>)], slots: u64) -> Vec<u8> {
        let table = HEADER_LEN as u64;
        let data_start = table + slots * DESCRIPTOR_LEN as u64;
        let mut out = vec![0u8; data_start as usize];
        out[..31].copy_from_slice(b"#!/usr/bin/env run-singularity\n");
        out[32..42].copy_from_slice(MAGIC);
        out[42..44].copy_from_slice(b"01");
        out[45..47].copy_from_slice(b"02");
        out[80..88].copy_from_slice(&(slots - entries.len() as u64).to_le_bytes());
        out[88..96].copy_from_slice(&slots.to_le_bytes());
        out[96..104].copy_from_slice(&table.to_le_bytes());
        out[104..112].copy_from_slice(&(slots * DESCRIPTOR_LEN as u64).to_le_bytes());
        out[112..120].copy_from_slice(&data_start.to_le_bytes());
        for (i, (dtype, extra, data)) in entries.iter().enumerate() {
            let at = table as usize + i * DESCRIPTOR_LEN;
            let offset = out.len() as u64;
            out[at..at + 4].copy_from_slice(&dtype.to_le_bytes());
            out[at + 4] = 1;
            out[at + 5..at + 9].copy_from_slice(&(i as u32 + 1).to_le_bytes());
            out[at + 17..at + 25].copy_from_slice(&offset.to_le_bytes());
            out[at + 25..at + 33].copy_from_slice(&(data.len() as u64).to_le_bytes());
            out[at + 201..at + 201 + extra.len()].copy_from_slice(extra);
            out.extend_from_slice(data);
        }
        out
    }

    fn partition(fs: u32, part: u32) -> Vec<u8> {
        let mut e = fs.to_le_bytes().to_vec();
        e.extend_from_slice(&part.to_le_bytes());
        e.extend_from_slice(b"02\0");
        e
    }

    #[test]
    fn finds_the_primary_squashfs_partition() {
        let img = build(
            &[
                (0x4001, vec![], b"Bootstrap: x".to_vec()),
                (
                    DATA_PARTITION,
                    partition(FS_SQUASHFS, PART_PRIMARY_SYSTEM),
                    b"hsqs-data".to_vec(),
                ),
                (DATA_SIGNATURE, 1u32.to_le_bytes().to_vec(), b"sig".to_vec()),
            ],
            8,
        );
        let sif = parse(&img, img.len() as u64).unwrap();
        assert_eq!(sif.descriptors.len(), 3);
        assert!(sif.is_signed());
        let Root::Squashfs { offset, size } = sif.root() else {
            panic!("no root: {sif:?}")
        };
        assert_eq!(
            &img[offset as usize..(offset + size) as usize],
            b"hsqs-data"
        );
        assert_eq!(sif.header.version, "01");
        assert_eq!(sif.header.arch, "02");
    }

    #[test]
    fn reports_unusable_roots() {
        for (fs, part, want) in [
            (FS_ENCRYPTED_SQUASHFS, PART_PRIMARY_SYSTEM, Root::Encrypted),
            (FS_EXT3, PART_PRIMARY_SYSTEM, Root::Ext3),
            (4, PART_PRIMARY_SYSTEM, Root::OtherFs(4)),
            (FS_SQUASHFS, 3, Root::Missing),
        ] {
            let img = build(&[(DATA_PARTITION, partition(fs, part), vec![1; 10])], 2);
            assert_eq!(parse(&img, img.len() as u64).unwrap().root(), want);
        }
    }

    #[test]
    fn offsets_past_the_end_are_refused() {
        let img = build(
            &[(
                DATA_PARTITION,
                partition(FS_SQUASHFS, PART_PRIMARY_SYSTEM),
                vec![7; 100],
            )],
            2,
        );
        // The file cut short: the partition runs past its end.
        let cut = &img[..img.len() - 1];
        assert!(matches!(
            parse(cut, cut.len() as u64),
            Err(SifError::Truncated(_))
        ));
        // A descriptor table that would end past the file.
        let mut bad = img.clone();
        bad[88..96].copy_from_slice(&3u64.to_le_bytes());
        assert!(matches!(parse(&bad, 300), Err(SifError::Truncated(_))));
        // Overflowing offset + size.
        let mut bad = img.clone();
        let at = HEADER_LEN + 17;
        bad[at..at + 8].copy_from_slice(&(i64::MAX as u64).to_le_bytes());
        assert!(parse(&bad, bad.len() as u64).is_err());
        // Negative offsets.
        let mut bad = img;
        bad[96..104].copy_from_slice(&(-1i64).to_le_bytes());
        assert!(matches!(
            parse(&bad, bad.len() as u64),
            Err(SifError::Corrupt(_))
        ));
    }

    #[test]
    fn never_panics_on_mangled_input() {
        let img = build(
            &[(
                DATA_PARTITION,
                partition(FS_SQUASHFS, PART_PRIMARY_SYSTEM),
                vec![7; 64],
            )],
            2,
        );
        // Every prefix, and every byte of the header and table set to extreme values.
        for len in 0..img.len() {
            let _ = parse(&img[..len], img.len() as u64);
            let _ = parse(&img[..len], len as u64);
        }
        let table_end = HEADER_LEN + 2 * DESCRIPTOR_LEN;
        for at in 0..table_end {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = img.clone();
                m[at] = v;
                let _ = parse(&m, m.len() as u64).map(|s| s.root());
            }
        }
        assert_eq!(parse(b"not a sif", 9), Err(SifError::NotSif));
    }
}
