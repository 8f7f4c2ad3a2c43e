//! `memtide image build`: builds the guest image (kernel + initramfs with busybox, the virtio
//! modules and the guest agent) into a cache directory and prints the paths it produced.
//!
//! ```text
//! memtide image build [--cache DIR] [--kernel BZIMAGE] [--agent BINARY]
//! ```
//!
//! Without `--kernel` the Debian `linux-image-cloud-amd64` kernel is resolved with apt-cache,
//! fetched with `apt-get download` and unpacked (once; later runs fetch nothing). Without
//! `--agent` the static guest agent is built from this workspace with cargo.
//! Bad input (a kernel or agent that is not a file): a message and exit code 2.

use clap::{Args, Subcommand};
use memtide_testbed::{Error, GuestImage, ImageConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `memtide image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// What to do with the guest image.
    #[command(subcommand)]
    pub action: ImageAction,
}

/// `memtide image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Build (or find in the cache) the guest image and print its paths.
    Build {
        /// Cache directory (default: $MEMTIDE_CACHE, else <workspace>/target/memtide-cache).
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Use this bzImage instead of the Debian kernel (its virtio drivers must be built in).
        #[arg(long, value_name = "BZIMAGE")]
        kernel: Option<PathBuf>,
        /// Use this prebuilt static guest agent instead of building it.
        #[arg(long, value_name = "BINARY")]
        agent: Option<PathBuf>,
    },
}

/// Runs `memtide image`.
pub fn run(args: &ImageArgs) -> ExitCode {
    match &args.action {
        ImageAction::Build {
            cache,
            kernel,
            agent,
        } => {
            let mut cfg = ImageConfig::default();
            if let Some(c) = cache {
                cfg.cache = c.clone();
            }
            cfg.kernel = kernel.clone();
            cfg.agent = agent.clone();
            match GuestImage::build(&cfg) {
                Ok(img) => {
                    let mut text = format!(
                        "kernel: {}\ninitrd: {}\nagent: {}\nmodules: {}\n",
                        img.kernel.display(),
                        img.initrd.display(),
                        img.agent.display(),
                        img.modules.join(" ")
                    );
                    if let Some(deb) = &img.debian {
                        text +=
                            &format!("debian package: {} ({})\n", deb.package, deb.root.display());
                    }
                    // A closed pipe (`| head`) is not an error worth a panic.
                    let _ =
                        std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
                    ExitCode::SUCCESS
                }
                Err(e @ Error::Config(_)) => {
                    eprintln!("memtide image build: error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("memtide image build: error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kernel_or_agent_is_bad_input_before_any_work() {
        let cache = std::env::temp_dir().join(format!("memtide-image-cli-{}", std::process::id()));
        for (kernel, agent) in [
            (Some("/nonexistent/bzImage".into()), None),
            (None, Some("/nonexistent/agent".into())),
        ] {
            let args = ImageArgs {
                action: ImageAction::Build {
                    cache: Some(cache.clone()),
                    kernel,
                    agent,
                },
            };
            assert_eq!(
                format!("{:?}", run(&args)),
                format!("{:?}", ExitCode::from(2))
            );
        }
        assert!(
            !cache.exists(),
            "bad input changes nothing (no cache directory made)"
        );
    }
}
