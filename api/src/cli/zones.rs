//! `memtide zones`: the zone layout Linux 6.1 (x86_64) computes for a memory map and
//! `kernelcore=` / `movablecore=` / `movable_node`.
//!
//! ```text
//! memtide zones --node N:START-END[:FLAGS] [--node ...] [--kernelcore SPEC]
//!               [--movablecore SPEC] [--movable-node] [--json]
//! ```
//!
//! START and END are byte addresses (decimal or `0x` hex), END inclusive, as in the kernel's
//! "Early memory node ranges" lines; FLAGS is `hotplug` and/or `mirror`, comma-separated.
//! Without `--json` the output is the kernel's own printout ("Zone ranges:", "Movable zone
//! start for each node", "Early memory node ranges", "Initmem setup node") followed by a
//! `/proc/zoneinfo`-style summary; with `--json` one object:
//! `{"zone_ranges": {"DMA": [start, end] | null, "DMA32": .., "Normal": ..},
//!   "movable_start": {"<node>": byte_address}, "zones": [{"node", "zone", "start_pfn"?,
//!   "spanned", "present"}]}` where `start_pfn` is left out for zones without present pages,
//! as `/proc/zoneinfo` does. Bad input: a message on stderr and exit code 2.

use clap::Args;
use memtide_allocator::layout::report::{free_area_init_lines, zoneinfo_summary, ZonesReport};
use memtide_allocator::layout::ZoneLayout;
use std::process::ExitCode;

/// Arguments of `memtide zones`.
#[derive(Debug, Args)]
pub struct ZonesArgs {
    /// Physical memory of a NUMA node: N:START-END[:hotplug|mirror[,...]], byte addresses
    /// (decimal or 0x hex), END inclusive; repeat for every range, sorted by address.
    #[arg(long = "node", value_name = "N:START-END[:FLAGS]", required = true)]
    pub node: Vec<String>,
    /// kernelcore= as the kernel takes it: nn[KMGTPE], nn% or mirror.
    #[arg(long, value_name = "SPEC", allow_hyphen_values = true)]
    pub kernelcore: Option<String>,
    /// movablecore= as the kernel takes it: nn[KMGTPE] or nn%.
    #[arg(long, value_name = "SPEC", allow_hyphen_values = true)]
    pub movablecore: Option<String>,
    /// The movable_node switch: memory of hotplug-flagged ranges becomes ZONE_MOVABLE and
    /// kernelcore=/movablecore= sizes are ignored.
    #[arg(long)]
    pub movable_node: bool,
    /// Print one JSON object instead of the kernel's text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `memtide zones`: prints the layout, or the problem with the input (exit code 2).
pub fn run(args: &ZonesArgs) -> ExitCode {
    let layout = match ZoneLayout::from_specs(
        &args.node,
        args.kernelcore.as_deref(),
        args.movablecore.as_deref(),
        args.movable_node,
    ) {
        Ok(layout) => layout,
        Err(e) => {
            eprintln!("memtide zones: error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{}", ZonesReport::new(&layout).to_json());
    } else {
        print!("{}", free_area_init_lines(&layout));
        println!();
        print!("{}", zoneinfo_summary(&layout));
    }
    ExitCode::SUCCESS
}
