//! Kernel modules of an unpacked kernel package: finding them, reading their `depends=` from
//! the `.modinfo` ELF section (Debian's package ships no modules.dep: depmod makes it at
//! install time), and ordering a set of modules so each is loaded after its dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors handling kernel modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// The modules directory cannot be read.
    #[error("cannot read kernel modules under {path}: {source}")]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A module file is not an ELF object with a `.modinfo` section.
    #[error("{path} is not a kernel module: {what}")]
    NotModule {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A wanted module (or a dependency) exists neither as a file nor built in.
    #[error("kernel module {name} not found under {dir} (needed by {needed_by})")]
    Missing {
        /// The module name.
        name: String,
        /// The modules directory.
        dir: PathBuf,
        /// Who asked for it.
        needed_by: String,
    },
    /// The dependencies form a cycle.
    #[error("kernel module dependency cycle through {0}")]
    Cycle(String),
}

/// Module names use `_` where file names may use `-` (`kvm-amd.ko` is module `kvm_amd`).
pub fn module_name(s: &str) -> String {
    s.trim_end_matches(".ko").replace('-', "_")
}

/// One module file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Module name (`virtio_pci`).
    pub name: String,
    /// The `.ko` file.
    pub path: PathBuf,
}

/// The modules of one kernel (`lib/modules/<release>`).
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

/// The `depends=` list from a module file's `.modinfo` section.
pub fn module_depends(path: &Path) -> Result<Vec<String>, KmodError> {
    use object::{Object, ObjectSection};
    let data = fs::read(path).map_err(|source| KmodError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |what: String| KmodError::NotModule {
        path: path.to_path_buf(),
        what,
    };
    let file = object::File::parse(&*data).map_err(|e| bad(e.to_string()))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("no .modinfo".into()))?;
    let info = section.data().map_err(|e| bad(e.to_string()))?;
    for entry in info.split(|b| *b == 0) {
        if let Some(list) = entry.strip_prefix(b"depends=") {
            let list = String::from_utf8_lossy(list);
            return Ok(list
                .split(',')
                .filter(|s| !s.is_empty())
                .map(module_name)
                .collect());
        }
    }
    Ok(Vec::new())
}

impl ModuleIndex {
    /// Indexes every `.ko` file under `dir` and reads `modules.builtin` if present.
    pub fn scan(dir: &Path) -> Result<Self, KmodError> {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = fs::read_dir(&d).map_err(|source| KmodError::Read {
                path: d.clone(),
                source,
            })?;
            for e in rd {
                let e = e.map_err(|source| KmodError::Read {
                    path: d.clone(),
                    source,
                })?;
                let p = e.path();
                let ft = e.file_type().map_err(|source| KmodError::Read {
                    path: p.clone(),
                    source,
                })?;
                if ft.is_dir() {
                    stack.push(p);
                } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                    if n.ends_with(".ko") {
                        files.insert(module_name(n), p.clone());
                    }
                }
            }
        }
        let builtin = match fs::read_to_string(dir.join("modules.builtin")) {
            Ok(t) => t
                .lines()
                .filter_map(|l| l.rsplit('/').next())
                .map(module_name)
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(KmodError::Read {
                    path: dir.join("modules.builtin"),
                    source,
                })
            }
        };
        Ok(ModuleIndex {
            dir: dir.to_path_buf(),
            files,
            builtin,
        })
    }

    /// Whether the kernel has `name` built in.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// The module files needed to load all of `wanted`, dependencies first (each once).
    /// Built-in modules are left out.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<Module>, KmodError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            let mut path = Vec::new();
            self.visit(
                &module_name(w),
                "the caller",
                &mut path,
                &mut done,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<(), KmodError> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(KmodError::Cycle(name.to_string()));
        }
        let Some(file) = self.files.get(name) else {
            if self.builtin.contains(name) {
                done.insert(name.to_string());
                return Ok(());
            }
            return Err(KmodError::Missing {
                name: name.to_string(),
                dir: self.dir.clone(),
                needed_by: needed_by.to_string(),
            });
        };
        path.push(name.to_string());
        for dep in module_depends(file)? {
            self.visit(&dep, name, path, done, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(Module {
            name: name.to_string(),
            path: file.clone(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized() {
        assert_eq!(module_name("kvm-amd.ko"), "kvm_amd");
        assert_eq!(module_name("virtio_pci"), "virtio_pci");
    }

    #[test]
    fn non_modules_and_missing_modules_are_errors() {
        let dir = std::env::temp_dir().join(format!("memtide-kmod-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("kernel/x")).expect("dir");
        fs::write(dir.join("kernel/x/fake.ko"), b"not elf").expect("write");
        fs::write(dir.join("modules.builtin"), "kernel/y/virtio_anchor.ko\n").expect("write");
        let idx = ModuleIndex::scan(&dir).expect("scan");
        assert!(idx.is_builtin("virtio_anchor"));
        assert_eq!(
            idx.load_order(&["virtio_anchor"]).expect("builtin ok"),
            vec![]
        );
        assert!(matches!(
            idx.load_order(&["fake"]),
            Err(KmodError::NotModule { .. })
        ));
        match idx.load_order(&["nosuch"]) {
            Err(KmodError::Missing { name, .. }) => assert_eq!(name, "nosuch"),
            other => panic!("expected Missing, got {other:?}"),
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
