//! Where downloads and built images live: `$MEMTIDE_CACHE`, else
//! `<workspace>/target/memtide-cache`, so that a second run fetches nothing.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The workspace root this crate was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The default cache directory (see the module docs).
pub fn default_cache_dir() -> PathBuf {
    match std::env::var_os("MEMTIDE_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("target").join("memtide-cache"),
    }
}

/// Creates `dir` (and parents) if needed.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create directory", dir))
}
