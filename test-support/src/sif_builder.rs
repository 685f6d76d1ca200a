//! Writes SIF files for tests, field by field as the published format lays them out
//! (sylabs/sif, format version 01): a 128-byte global header, a table of 585-byte
//! descriptors, then the data objects, each aligned to 4096 bytes. Written apart from
//! the runtime's parser on purpose: a test must not share the code it checks.
//! Used by runtime/tests/formats.rs and tests/slurm_e2e.rs.

pub const DEFFILE: u32 = 0x4001;
pub const PARTITION: u32 = 0x4004;
pub const SIGNATURE: u32 = 0x4005;
pub const FS_SQUASHFS: u32 = 1;
pub const FS_EXT3: u32 = 2;
pub const FS_ENCRYPTED_SQUASHFS: u32 = 5;
pub const PART_PRIMARY_SYSTEM: u32 = 2;
pub const PART_DATA: u32 = 3;
const HASH_SHA256: u32 = 1;
const ALIGN: usize = 4096;
const SLOTS: usize = 48;
const DESCRIPTOR_LEN: usize = 585;
const GROUP_MASK: u32 = 0xf000_0000;

/// One data object of the file.
pub struct Object {
    pub data_type: u32,
    pub name: String,
    /// The 384-byte type-specific field (shorter is zero-padded).
    pub extra: Vec<u8>,
    pub data: Vec<u8>,
    /// The descriptor id this one refers to (a signature names what it signs).
    pub linked_id: u32,
}

pub fn deffile(text: &str) -> Object {
    Object {
        data_type: DEFFILE,
        name: String::new(),
        extra: vec![],
        data: text.as_bytes().to_vec(),
        linked_id: 0,
    }
}

/// A partition object; `fs` and `part` as in the format (squashfs=1, ext3=2, ...;
/// primary system=2, data=3), architecture amd64 ("02").
pub fn partition(fs: u32, part: u32, data: Vec<u8>) -> Object {
    let mut extra = fs.to_le_bytes().to_vec();
    extra.extend_from_slice(&part.to_le_bytes());
    extra.extend_from_slice(b"02\0");
    Object {
        data_type: PARTITION,
        name: String::new(),
        extra,
        data,
        linked_id: 0,
    }
}

/// A signature object over descriptor `signs` (content: a stand-in for the PGP
/// clear-signed message, which ferry does not verify).
pub fn signature(signs: u32) -> Object {
    let mut extra = HASH_SHA256.to_le_bytes().to_vec();
    extra.extend_from_slice(&[0xab; 20]); // signing key fingerprint
    Object {
        data_type: SIGNATURE,
        name: String::new(),
        extra,
        data: b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\ntest\n".to_vec(),
        linked_id: signs,
    }
}

/// The bytes of a SIF file holding `objects`; descriptor ids are 1, 2, ... in order.
pub fn build(objects: &[Object]) -> Vec<u8> {
    // Where siftool and Apptainer put the table.
    let table_offset = 4096usize;
    let table_size = SLOTS * DESCRIPTOR_LEN;
    let data_offset = (table_offset + table_size).div_ceil(ALIGN) * ALIGN;
    let now: i64 = 1_700_000_000;
    let mut out = vec![0u8; data_offset];
    let mut placed = Vec::new();
    for obj in objects {
        let offset = out.len().div_ceil(ALIGN) * ALIGN;
        out.resize(offset, 0);
        out.extend_from_slice(&obj.data);
        placed.push(offset);
    }
    let data_size = out.len() - data_offset;

    let h = &mut out[..128];
    h[..31].copy_from_slice(b"#!/usr/bin/env run-singularity\n");
    h[32..42].copy_from_slice(b"SIF_MAGIC\0");
    h[42..45].copy_from_slice(b"01\0");
    h[45..48].copy_from_slice(b"02\0");
    h[48..64].copy_from_slice(&[0x5a; 16]); // UUID
    h[64..72].copy_from_slice(&now.to_le_bytes());
    h[72..80].copy_from_slice(&now.to_le_bytes());
    h[80..88].copy_from_slice(&((SLOTS - objects.len()) as i64).to_le_bytes());
    h[88..96].copy_from_slice(&(SLOTS as i64).to_le_bytes());
    h[96..104].copy_from_slice(&(table_offset as i64).to_le_bytes());
    h[104..112].copy_from_slice(&(table_size as i64).to_le_bytes());
    h[112..120].copy_from_slice(&(data_offset as i64).to_le_bytes());
    h[120..128].copy_from_slice(&(data_size as i64).to_le_bytes());

    for (i, (obj, offset)) in objects.iter().zip(&placed).enumerate() {
        let at = table_offset + i * DESCRIPTOR_LEN;
        let d = &mut out[at..at + DESCRIPTOR_LEN];
        let padded = obj.data.len().div_ceil(ALIGN) * ALIGN;
        d[0..4].copy_from_slice(&obj.data_type.to_le_bytes());
        d[4] = 1; // used
        d[5..9].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        d[9..13].copy_from_slice(&(GROUP_MASK | 1).to_le_bytes());
        d[13..17].copy_from_slice(&obj.linked_id.to_le_bytes());
        d[17..25].copy_from_slice(&(*offset as i64).to_le_bytes());
        d[25..33].copy_from_slice(&(obj.data.len() as i64).to_le_bytes());
        d[33..41].copy_from_slice(&(padded as i64).to_le_bytes());
        d[41..49].copy_from_slice(&now.to_le_bytes());
        d[49..57].copy_from_slice(&now.to_le_bytes());
        // uid, gid at 57..73 stay 0
        let name = obj.name.as_bytes();
        d[73..73 + name.len().min(128)].copy_from_slice(&name[..name.len().min(128)]);
        d[201..201 + obj.extra.len()].copy_from_slice(&obj.extra);
    }
    out
}

/// Byte position of descriptor `index`'s data-offset field (to corrupt it in tests).
pub fn offset_field(index: usize) -> usize {
    4096 + index * DESCRIPTOR_LEN + 17
}
