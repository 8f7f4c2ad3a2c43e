//! Writing initramfs archives: the kernel's "newc" cpio format (see the kernel's
//! Documentation/driver-api/early-userspace/buffer-format.rst), optionally gzip-compressed.
//!
//! Entries are collected first (so a file given twice keeps the last copy and every parent
//! directory is created), then written sorted by path, directories before their contents.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Errors building an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// An archive path is empty, relative-escaping (`..`) or not valid.
    #[error("bad path in archive: {0:?}")]
    BadPath(String),
    /// A source file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The archive cannot be written.
    #[error("cannot write archive {path}: {source}")]
    Write {
        /// The archive.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file is too big for newc's 32-bit size field.
    #[error("{0} is too big for a cpio archive")]
    TooBig(String),
}

#[derive(Debug, Clone)]
enum Content {
    Dir,
    /// Bytes in memory.
    Data(Vec<u8>),
    /// A file on disk, read when the archive is written.
    File(PathBuf),
    Symlink(String),
    CharDev(u32, u32),
}

#[derive(Debug, Clone)]
struct Entry {
    mode: u32,
    content: Content,
}

/// An archive being assembled.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn normalize(path: &str) -> Result<String, CpioError> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(CpioError::BadPath(path.to_string()));
    }
    Ok(parts.join("/"))
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// The skeleton every initramfs of ours starts from (the guest image's and the emulated
    /// host's): the mount points and binary folders busybox's init script uses,
    /// `lib/modules`, `dev/console` (so the kernel has a console before devtmpfs is mounted),
    /// plus `extra_dirs`.
    pub fn linux_root(extra_dirs: &[&str]) -> Result<Self, CpioError> {
        let mut a = Self::new();
        for d in [
            "proc",
            "sys",
            "dev",
            "tmp",
            "bin",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "lib/modules",
        ]
        .iter()
        .chain(extra_dirs)
        {
            a.dir(d)?;
        }
        a.char_dev("dev/console", 5, 1, 0o600)?;
        Ok(a)
    }

    fn insert(&mut self, path: &str, mode: u32, content: Content) -> Result<(), CpioError> {
        let path = normalize(path)?;
        let comps: Vec<&str> = path.split('/').collect();
        for i in 1..comps.len() {
            self.entries.entry(comps[..i].join("/")).or_insert(Entry {
                mode: S_IFDIR | 0o755,
                content: Content::Dir,
            });
        }
        self.entries.insert(path, Entry { mode, content });
        Ok(())
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str) -> Result<(), CpioError> {
        self.insert(path, S_IFDIR | 0o755, Content::Dir)
    }

    /// Adds a file with the given bytes and permission bits.
    pub fn data(
        &mut self,
        path: &str,
        bytes: impl Into<Vec<u8>>,
        perm: u32,
    ) -> Result<(), CpioError> {
        self.insert(path, S_IFREG | (perm & 0o7777), Content::Data(bytes.into()))
    }

    /// Adds a copy of a file from disk (symlinks followed), keeping its permission bits.
    pub fn file(&mut self, path: &str, source: &Path) -> Result<(), CpioError> {
        let meta = fs::metadata(source).map_err(|e| CpioError::Read {
            path: source.to_path_buf(),
            source: e,
        })?;
        use std::os::unix::fs::PermissionsExt;
        let perm = meta.permissions().mode() & 0o7777;
        self.insert(path, S_IFREG | perm, Content::File(source.to_path_buf()))
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.insert(path, S_IFLNK | 0o777, Content::Symlink(target.to_string()))
    }

    /// Adds a character device node.
    pub fn char_dev(
        &mut self,
        path: &str,
        major: u32,
        minor: u32,
        perm: u32,
    ) -> Result<(), CpioError> {
        self.insert(
            path,
            S_IFCHR | (perm & 0o7777),
            Content::CharDev(major, minor),
        )
    }

    /// Whether the archive holds `path`.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path)
            .map(|p| self.entries.contains_key(&p))
            .unwrap_or(false)
    }

    /// Writes the archive in newc format to `out`.
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<(), CpioError> {
        let mut offset = 0usize;
        for (ino, (path, entry)) in (1u32..).zip(self.entries.iter()) {
            let (body, rdev): (Vec<u8>, (u32, u32)) = match &entry.content {
                Content::Dir => (Vec::new(), (0, 0)),
                Content::Data(d) => (d.clone(), (0, 0)),
                Content::File(src) => (
                    fs::read(src).map_err(|e| CpioError::Read {
                        path: src.clone(),
                        source: e,
                    })?,
                    (0, 0),
                ),
                Content::Symlink(t) => (t.as_bytes().to_vec(), (0, 0)),
                Content::CharDev(ma, mi) => (Vec::new(), (*ma, *mi)),
            };
            let size = u32::try_from(body.len()).map_err(|_| CpioError::TooBig(path.clone()))?;
            let nlink = if matches!(entry.content, Content::Dir) {
                2
            } else {
                1
            };
            write_entry(
                out,
                &mut offset,
                ino,
                entry.mode,
                nlink,
                rdev,
                path,
                &body,
                size,
            )?;
        }
        write_entry(out, &mut offset, 0, 0, 1, (0, 0), "TRAILER!!!", &[], 0)?;
        // Pad the archive to a 512-byte multiple, as cpio(1) does.
        let pad = (512 - offset % 512) % 512;
        out.write_all(&vec![0u8; pad]).map_err(io_write)?;
        Ok(())
    }

    /// Writes the archive to `path`, gzip-compressed when `gzip` is true (else plain newc,
    /// which the kernel accepts as well and unpacks faster under emulation). Writes to a
    /// temporary name first and renames, so a reader never sees a half-written archive.
    pub fn write_file(&self, path: &Path, gzip: bool) -> Result<(), CpioError> {
        let werr = |e: io::Error| CpioError::Write {
            path: path.to_path_buf(),
            source: e,
        };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let file = fs::File::create(&tmp).map_err(werr)?;
        let mut buf = io::BufWriter::with_capacity(1 << 20, file);
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(&mut buf, flate2::Compression::fast());
            self.write_to(&mut enc).map_err(|e| rewrap(e, path))?;
            enc.finish().map_err(werr)?;
        } else {
            self.write_to(&mut buf).map_err(|e| rewrap(e, path))?;
        }
        buf.flush().map_err(werr)?;
        drop(buf);
        fs::rename(&tmp, path).map_err(werr)
    }
}

fn rewrap(e: CpioError, path: &Path) -> CpioError {
    match e {
        CpioError::Write { source, .. } => CpioError::Write {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    }
}

fn io_write(source: io::Error) -> CpioError {
    CpioError::Write {
        path: PathBuf::from("<stream>"),
        source,
    }
}

#[allow(clippy::too_many_arguments)]
fn write_entry<W: Write>(
    out: &mut W,
    offset: &mut usize,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    body: &[u8],
    size: u32,
) -> Result<(), CpioError> {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {devmajor:08x}{devminor:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        devmajor = 0,
        devminor = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0,
    );
    out.write_all(header.as_bytes()).map_err(io_write)?;
    out.write_all(name.as_bytes()).map_err(io_write)?;
    out.write_all(&[0]).map_err(io_write)?;
    *offset += header.len() + namesize;
    let pad = (4 - *offset % 4) % 4;
    out.write_all(&[0u8; 3][..pad]).map_err(io_write)?;
    *offset += pad;
    out.write_all(body).map_err(io_write)?;
    *offset += body.len();
    let pad = (4 - *offset % 4) % 4;
    out.write_all(&[0u8; 3][..pad]).map_err(io_write)?;
    *offset += pad;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn paths_are_checked_and_parents_created() {
        let mut a = Archive::new();
        assert!(matches!(a.data("", "x", 0o644), Err(CpioError::BadPath(_))));
        assert!(matches!(
            a.data("a/../b", "x", 0o644),
            Err(CpioError::BadPath(_))
        ));
        a.data("/usr/share/x/y", "hi", 0o644).expect("adds");
        assert!(a.contains("usr") && a.contains("usr/share/x") && a.contains("/usr/share/x/y"));
    }

    #[test]
    fn cpio_tool_lists_and_extracts_what_we_wrote() {
        // cpio(1) is a test dependency (scripts/install-deps.sh installs it).
        let dir = std::env::temp_dir().join(format!("memtide-cpio-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("tmp dir");
        let mut a = Archive::new();
        a.data("init", "#!/bin/sh\necho hi\n", 0o755).expect("add");
        a.data("etc/odd", vec![1u8, 2, 3, 4, 5], 0o600)
            .expect("add");
        a.symlink("bin/sh", "busybox").expect("add");
        a.char_dev("dev/console", 5, 1, 0o600).expect("add");
        let mut bytes = Vec::new();
        a.write_to(&mut bytes).expect("write");
        assert_eq!(bytes.len() % 512, 0);
        let arch = dir.join("a.cpio");
        fs::write(&arch, &bytes).expect("write file");
        let out = Command::new("cpio")
            .args(["-itv", "-F"])
            .arg(&arch)
            .output()
            .expect("cpio runs");
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            list.contains("-rwxr-xr-x") && list.contains("init"),
            "{list}"
        );
        assert!(list.contains("bin/sh -> busybox"), "{list}");
        assert!(
            list.contains("crw-------") && list.contains("dev/console"),
            "{list}"
        );
        let x = dir.join("x");
        fs::create_dir_all(&x).expect("dir");
        let st = Command::new("cpio")
            .args(["-id", "--quiet", "-F"])
            .arg(&arch)
            .current_dir(&x)
            .status()
            .expect("cpio runs");
        assert!(st.success());
        assert_eq!(
            fs::read(x.join("etc/odd")).expect("extracted"),
            vec![1u8, 2, 3, 4, 5]
        );
        let gz = dir.join("a.cpio.gz");
        a.write_file(&gz, true).expect("gz write");
        let mut d = flate2::read::GzDecoder::new(fs::File::open(&gz).expect("open"));
        let mut plain = Vec::new();
        io::Read::read_to_end(&mut d, &mut plain).expect("gunzip");
        assert_eq!(plain, bytes);
        let _ = fs::remove_dir_all(&dir);
    }
}
