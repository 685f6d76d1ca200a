//! The `DT_SONAME` of a shared library, read from its ELF header: the name the loader
//! looks for (`libcuda.so.1`) when the file a spec mounts has another
//! (`libcuda.so.550.54.15`). ferry makes the link `SONAME -> FILE` in the container, as
//! ldconfig does, instead of running a vendor's hook as root.
//!
//! The reader follows the program headers only (what the loader itself uses):
//! `PT_DYNAMIC` gives the dynamic entries, whose `DT_STRTAB` address is mapped to a
//! file offset through the `PT_LOAD` segment that holds it. Every offset and size comes
//! from the file, so each is checked against the file's length and small bounds; any
//! doubt is "no name" (no link), never an error.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Program headers read at most (a library has about ten).
const MAX_PROGRAM_HEADERS: u64 = 64;
/// Dynamic entries read at most (a library has a few dozen).
const MAX_DYNAMIC_ENTRIES: u64 = 512;
/// A file name's limit on Linux.
const MAX_NAME: usize = 255;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const ET_DYN: u16 = 3;

/// The library's `DT_SONAME`, when `file` is a well-formed ELF shared object that has
/// one and it is a plain file name (printable ASCII, no `/`, not `.` or `..`).
pub fn soname(file: &File) -> Option<String> {
    let len = file.metadata().ok()?.len();
    let elf = Elf::header(file, len)?;
    let (dynamic, loads) = elf.segments()?;
    let (strtab, strsz, name) = elf.dynamic(dynamic)?;
    let name = name?;
    let table = loads.iter().find_map(|load| load.offset_of(strtab))?;
    if strsz.is_some_and(|size| name >= size) {
        return None;
    }
    let at = table.checked_add(name)?;
    let mut buf = [0u8; MAX_NAME + 1];
    let n = elf.read_up_to(at, &mut buf)?;
    let end = buf[..n].iter().position(|&b| b == 0)?;
    plain_name(&buf[..end])
}

fn plain_name(bytes: &[u8]) -> Option<String> {
    let ok = !bytes.is_empty()
        && bytes != b"."
        && bytes != b".."
        && bytes.iter().all(|&b| b.is_ascii_graphic() && b != b'/');
    ok.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// The header fields the reader needs, and how to read the rest.
struct Elf<'f> {
    file: &'f File,
    len: u64,
    wide: bool,
    big: bool,
    phoff: u64,
    phentsize: u64,
    phnum: u64,
}

/// A `PT_LOAD` segment: where its bytes are in the file and in memory.
struct Load {
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

impl Load {
    /// The file offset of the memory address `addr`, when the segment's file bytes hold it.
    fn offset_of(&self, addr: u64) -> Option<u64> {
        let into = addr.checked_sub(self.vaddr)?;
        (into < self.filesz).then(|| self.offset.checked_add(into))?
    }
}

impl<'f> Elf<'f> {
    fn header(file: &'f File, len: u64) -> Option<Elf<'f>> {
        let mut ident = [0u8; 64];
        let n = read_at(file, len, 0, &mut ident)?;
        let ident = &ident[..n];
        if ident.len() < 52 || ident[..4] != *b"\x7fELF" || ident[6] != 1 {
            return None;
        }
        let wide = match ident[4] {
            1 => false,
            2 => true,
            _ => return None,
        };
        let big = match ident[5] {
            1 => false,
            2 => true,
            _ => return None,
        };
        let mut elf = Elf {
            file,
            len,
            wide,
            big,
            phoff: 0,
            phentsize: 0,
            phnum: 0,
        };
        if elf.u16(&ident[16..]) != ET_DYN {
            return None;
        }
        let (phoff, phentsize, phnum, min_entry) = if wide {
            if ident.len() < 64 {
                return None;
            }
            (elf.u64(&ident[32..]), &ident[54..], &ident[56..], 56)
        } else {
            (elf.u32(&ident[28..]) as u64, &ident[42..], &ident[44..], 32)
        };
        elf.phoff = phoff;
        elf.phentsize = elf.u16(phentsize) as u64;
        elf.phnum = elf.u16(phnum) as u64;
        if elf.phentsize < min_entry || elf.phnum == 0 || elf.phnum > MAX_PROGRAM_HEADERS {
            return None;
        }
        Some(elf)
    }

    /// The `PT_DYNAMIC` segment (file offset and size) and every `PT_LOAD`.
    fn segments(&self) -> Option<((u64, u64), Vec<Load>)> {
        let mut dynamic = None;
        let mut loads = Vec::new();
        for i in 0..self.phnum {
            let at = self.phoff.checked_add(i.checked_mul(self.phentsize)?)?;
            let mut entry = [0u8; 56];
            let size = if self.wide { 56 } else { 32 };
            self.read_exact(at, &mut entry[..size])?;
            let kind = self.u32(&entry);
            // (offset, vaddr, filesz) in each class's field order.
            let (offset, vaddr, filesz) = if self.wide {
                (
                    self.u64(&entry[8..]),
                    self.u64(&entry[16..]),
                    self.u64(&entry[32..]),
                )
            } else {
                (
                    self.u32(&entry[4..]) as u64,
                    self.u32(&entry[8..]) as u64,
                    self.u32(&entry[16..]) as u64,
                )
            };
            match kind {
                PT_DYNAMIC if dynamic.is_none() => dynamic = Some((offset, filesz)),
                PT_LOAD => loads.push(Load {
                    offset,
                    vaddr,
                    filesz,
                }),
                _ => {}
            }
        }
        Some((dynamic?, loads))
    }

    /// From the dynamic entries: `DT_STRTAB` (an address), `DT_STRSZ` and `DT_SONAME`
    /// (an offset into the table), up to `DT_NULL`.
    fn dynamic(&self, (offset, size): (u64, u64)) -> Option<(u64, Option<u64>, Option<u64>)> {
        let entry: u64 = if self.wide { 16 } else { 8 };
        let count = (size / entry).min(MAX_DYNAMIC_ENTRIES);
        let (mut strtab, mut strsz, mut soname) = (None, None, None);
        for i in 0..count {
            let mut raw = [0u8; 16];
            let raw = &mut raw[..entry as usize];
            self.read_exact(offset.checked_add(i * entry)?, raw)?;
            let (tag, value) = if self.wide {
                (self.u64(raw), self.u64(&raw[8..]))
            } else {
                (self.u32(raw) as u64, self.u32(&raw[4..]) as u64)
            };
            match tag {
                DT_NULL => break,
                DT_STRTAB => strtab = Some(value),
                DT_STRSZ => strsz = Some(value),
                DT_SONAME => soname = Some(value),
                _ => {}
            }
        }
        Some((strtab?, strsz, soname))
    }

    fn read_exact(&self, at: u64, buf: &mut [u8]) -> Option<()> {
        (read_at(self.file, self.len, at, buf)? == buf.len()).then_some(())
    }

    /// Reads what the file has of `buf.len()` bytes from `at` (at least one).
    fn read_up_to(&self, at: u64, buf: &mut [u8]) -> Option<usize> {
        read_at(self.file, self.len, at, buf).filter(|&n| n > 0)
    }

    fn u16(&self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn u64(&self, b: &[u8]) -> u64 {
        let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        if self.big {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        }
    }
}

/// Reads into `buf` from `at`, no further than the file's length `len`: how many bytes.
fn read_at(file: &File, len: u64, at: u64, buf: &mut [u8]) -> Option<usize> {
    if at >= len {
        return None;
    }
    let want = (buf.len() as u64).min(len - at) as usize;
    let buf = &mut buf[..want];
    file.read_exact_at(buf, at).ok()?;
    Some(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ferry-soname-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// `gcc -shared` of a one-function library, with `-Wl,-soname,SONAME` when given;
    /// None when the machine has no gcc (the malformed inputs still run).
    fn library(dir: &Path, name: &str, soname: Option<&str>, extra: &[&str]) -> Option<PathBuf> {
        let source = dir.join("lib.c");
        std::fs::write(&source, "int fake_driver_version(void) { return 550; }\n").unwrap();
        let out = dir.join(name);
        let mut gcc = Command::new("gcc");
        gcc.args(["-shared", "-fPIC", "-o"])
            .arg(&out)
            .arg(&source)
            .args(extra);
        if let Some(soname) = soname {
            gcc.arg(format!("-Wl,-soname,{soname}"));
        }
        match gcc.status() {
            Ok(s) if s.success() => Some(out),
            Ok(s) => panic!("gcc failed: {s}"),
            Err(_) => {
                eprintln!("no gcc: the tests of real libraries are skipped");
                None
            }
        }
    }

    fn of(path: &Path) -> Option<String> {
        soname(&File::open(path).unwrap())
    }

    fn of_bytes(dir: &Path, bytes: &[u8]) -> Option<String> {
        let path = dir.join("bytes");
        std::fs::write(&path, bytes).unwrap();
        of(&path)
    }

    #[test]
    fn a_library_built_with_a_soname_tells_it() {
        let s = scratch("built");
        let Some(lib) = library(&s.0, "libfake.so.550.54.15", Some("libfake.so.1"), &[]) else {
            return;
        };
        assert_eq!(of(&lib).as_deref(), Some("libfake.so.1"));
        let plain = library(&s.0, "libplain.so", None, &[]).unwrap();
        assert_eq!(of(&plain), None, "no DT_SONAME");
        // A 32-bit library, where the compiler can make one.
        if let Some(lib32) = Command::new("gcc")
            .args(["-m32", "-shared", "-fPIC", "-x", "c", "-", "-o"])
            .arg(s.0.join("lib32.so"))
            .arg("-Wl,-soname,libfake32.so.1")
            .stdin(std::process::Stdio::null())
            .status()
            .ok()
            .filter(|st| st.success())
            .map(|_| s.0.join("lib32.so"))
        {
            assert_eq!(of(&lib32).as_deref(), Some("libfake32.so.1"));
        }
    }

    #[test]
    fn big_endian_and_32_bit_headers_read_the_same() {
        // A hand-made ELF32 big-endian object: header, one PT_LOAD over the whole file,
        // PT_DYNAMIC with DT_STRTAB, DT_SONAME and DT_NULL, then the string table.
        let s = scratch("be32");
        let mut f = vec![0u8; 0x100];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 1; // ELFCLASS32
        f[5] = 2; // big-endian
        f[6] = 1;
        f[16..18].copy_from_slice(&ET_DYN.to_be_bytes());
        f[28..32].copy_from_slice(&52u32.to_be_bytes()); // e_phoff
        f[42..44].copy_from_slice(&32u16.to_be_bytes()); // e_phentsize
        f[44..46].copy_from_slice(&2u16.to_be_bytes()); // e_phnum
        let phdr = |f: &mut Vec<u8>, at: usize, kind: u32, offset: u32, vaddr: u32, size: u32| {
            f[at..at + 4].copy_from_slice(&kind.to_be_bytes());
            f[at + 4..at + 8].copy_from_slice(&offset.to_be_bytes());
            f[at + 8..at + 12].copy_from_slice(&vaddr.to_be_bytes());
            f[at + 16..at + 20].copy_from_slice(&size.to_be_bytes());
        };
        phdr(&mut f, 52, PT_LOAD, 0, 0x1000, 0x100);
        phdr(&mut f, 84, PT_DYNAMIC, 0x80, 0x1080, 24);
        let dynent = |f: &mut Vec<u8>, at: usize, tag: u32, value: u32| {
            f[at..at + 4].copy_from_slice(&tag.to_be_bytes());
            f[at + 4..at + 8].copy_from_slice(&value.to_be_bytes());
        };
        dynent(&mut f, 0x80, DT_STRTAB as u32, 0x10c0);
        dynent(&mut f, 0x88, DT_SONAME as u32, 1);
        dynent(&mut f, 0x90, DT_NULL as u32, 0);
        f[0xc1..0xc1 + 13].copy_from_slice(b"libbig.so.2\0\0");
        assert_eq!(of_bytes(&s.0, &f).as_deref(), Some("libbig.so.2"));
        // The same name past the end of the string table's size: refused.
        let mut sized = f.clone();
        dynent(&mut sized, 0x90, DT_STRSZ as u32, 1);
        assert_eq!(of_bytes(&s.0, &sized), None);
        // A name with a slash, or "..": refused.
        let mut slash = f.clone();
        slash[0xc1..0xc1 + 6].copy_from_slice(b"../x\0\0");
        assert_eq!(of_bytes(&s.0, &slash), None);
        // The string table's address outside every PT_LOAD: refused.
        let mut outside = f.clone();
        dynent(&mut outside, 0x80, DT_STRTAB as u32, 0x9000);
        assert_eq!(of_bytes(&s.0, &outside), None);
    }

    #[test]
    fn malformed_files_have_no_name() {
        let s = scratch("bad");
        assert_eq!(of_bytes(&s.0, b""), None);
        assert_eq!(of_bytes(&s.0, b"\x7fELF"), None);
        assert_eq!(of_bytes(&s.0, b"#!/bin/sh\necho not a library\n"), None);
        let Some(lib) = library(&s.0, "libx.so.1.0", Some("libx.so.1"), &[]) else {
            return;
        };
        let good = std::fs::read(&lib).unwrap();
        // Every truncation of a real library: never a panic, and no name that is not it.
        for len in (0..good.len()).step_by(97) {
            let name = of_bytes(&s.0, &good[..len]);
            assert!(name.is_none() || name.as_deref() == Some("libx.so.1"));
        }
        // Huge offsets and counts in the header: no name, no huge read.
        for (at, value) in [
            (32usize, u64::MAX.to_le_bytes().to_vec()), // e_phoff
            (32, (good.len() as u64 - 8).to_le_bytes().to_vec()),
            (54, 0xffffu16.to_le_bytes().to_vec()), // e_phentsize
            (56, 0xffffu16.to_le_bytes().to_vec()), // e_phnum
            (56, 0u16.to_le_bytes().to_vec()),
            (4, vec![7]),                      // class
            (5, vec![9]),                      // data
            (16, 2u16.to_le_bytes().to_vec()), // an executable, not a library
        ] {
            let mut bad = good.clone();
            bad[at..at + value.len()].copy_from_slice(&value);
            assert_eq!(of_bytes(&s.0, &bad), None, "field at {at}");
        }
        // Every program header's offsets and sizes made huge, one at a time.
        let phoff = u64::from_le_bytes(good[32..40].try_into().unwrap()) as usize;
        let phnum = u16::from_le_bytes(good[56..58].try_into().unwrap()) as usize;
        for i in 0..phnum {
            for field in [8usize, 16, 32] {
                let mut bad = good.clone();
                let at = phoff + i * 56 + field;
                bad[at..at + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
                let name = of_bytes(&s.0, &bad);
                assert!(name.is_none() || name.as_deref() == Some("libx.so.1"));
            }
        }
    }
}
