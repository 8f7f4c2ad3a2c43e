//! Shared libraries of a dynamically linked binary (from `ldd`), so a binary can be copied into
//! an initramfs together with everything the dynamic loader will look for.

use crate::error::{Error, Result};
use crate::tools;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The absolute paths of the libraries and the loader `binary` needs; empty for a static
/// binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    tools::need("ldd", "libc-bin")?;
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| Error::Command {
            cmd: format!("ldd {}", binary.display()),
            detail: e.to_string(),
        })?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(Error::Command {
            cmd: format!("ldd {}", binary.display()),
            detail: text,
        });
    }
    parse_ldd(&text).map_err(|detail| Error::Command {
        cmd: format!("ldd {}", binary.display()),
        detail,
    })
}

/// Parses `ldd` output: `name => /path (addr)` and `/loader (addr)` lines.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("linux-vdso") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line,
        };
        if target.starts_with("not found") {
            return Err(format!("missing library: {line}"));
        }
        let path = target.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse_ldd(t),
            Ok(vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ])
        );
        assert!(parse_ldd("\tlibq.so => not found\n").is_err());
    }

    #[test]
    fn a_real_dynamic_binary_has_libc_and_the_loader() {
        let sh = tools::which("ls").expect("ls exists");
        let libs = shared_libraries(&sh).expect("ldd works");
        assert!(
            libs.iter().any(|p| p.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|p| p.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
    }
}
