//! `memtide pool`: the service's host memory pool, per node and zone (or `--json`).
//! `memtide pool --audit`: the pool checked against what the VMs hold; exit status 1 when
//! the audit finds a problem.

use std::process::ExitCode;

use clap::Args;
use memtide_vmm::control::{PoolAudit, PoolInfo};

use super::vm::{client_of, report, ConnArgs};

/// Arguments of `memtide pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// How to reach the service.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Audit the pool against the VMs' holdings (no page with two owners, none leaked).
    #[arg(long)]
    pub audit: bool,
}

/// The human form of an audit.
pub fn audit_table(a: &PoolAudit) -> String {
    let mut out = format!(
        "pool audit: {}
allocated pages: {}
owned pages:     {}
",
        if a.consistent {
            "consistent"
        } else {
            "PROBLEMS FOUND"
        },
        a.allocated_pages,
        a.owned_pages
    );
    for o in &a.owners {
        out.push_str(&format!(
            "  {:<16} {:<8} {:>10} pages\n",
            o.vm, o.kind, o.pages
        ));
    }
    for p in &a.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    out
}

/// The human table of the pool.
pub fn table(p: &PoolInfo) -> String {
    let mib = |pages: u64| format!("{}M", (pages * p.page_size) >> 20);
    let mut out = format!(
        "pool: {} managed, {} free (min_free_kbytes {})\n",
        mib(p.managed_pages),
        mib(p.free_pages),
        p.min_free_kbytes
    );
    out.push_str(&format!(
        "{:<5} {:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}  buddyinfo (order 0..10)\n",
        "NODE", "ZONE", "START_PFN", "SPANNED", "PRESENT", "MANAGED", "FREE", "MIN", "LOW", "HIGH"
    ));
    for n in &p.nodes {
        for z in &n.zones {
            let buddy: Vec<String> = z.buddyinfo.iter().map(|c| c.to_string()).collect();
            out.push_str(&format!(
                "{:<5} {:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}  {}\n",
                n.node,
                z.zone,
                z.start_pfn,
                z.spanned,
                z.present,
                z.managed,
                z.free,
                z.watermarks.min,
                z.watermarks.low,
                z.watermarks.high,
                buddy.join(" ")
            ));
        }
    }
    out
}

/// Runs `memtide pool`.
pub fn run(args: &PoolArgs) -> ExitCode {
    let client = match client_of(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if args.audit {
        let audit = client.pool_audit();
        let consistent = audit.as_ref().is_ok_and(|a| a.consistent);
        let code = report("pool --audit", audit, args.conn.json, audit_table);
        return if code == ExitCode::SUCCESS && !consistent {
            ExitCode::from(1)
        } else {
            code
        };
    }
    report("pool", client.pool(), args.conn.json, table)
}
