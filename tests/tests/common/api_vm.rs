//! VMs created through a running memtide's REST API (`memtide vm create`) inside the KVM
//! host, with their console on a Unix socket and `memtide vm console` attached to a host
//! console, so their agents answer like the `memtide run` guest's.

// Each test binary compiles every helper module and uses only some.
#![allow(dead_code)]

use super::balloon::num;
use memtide_testbed::{retry_boot, say, Error, Guest, KvmHost, Policy, Result};
use std::time::{Duration, Instant};

/// How long a created VM may take to its agent's first line.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(150);

/// Creates VM `id` in the memtide serving `api_sock` (`numa`: one `--numa` spec, 1 vCPU),
/// attaches to its console socket and waits for the agent. A dead or silent boot deletes the
/// VM and creates it again (the harness's dead-boot policy).
pub fn create_attached(
    host: &KvmHost,
    memtide: &str,
    api_sock: &str,
    id: &str,
    numa: &str,
) -> Result<Guest> {
    retry_boot(&format!("guest {id}"), Policy::Guest, |_| {
        let _ = host.run(
            &format!(
                "{memtide} vm shutdown {id} --api-sock {api_sock}; \
                 {memtide} vm delete {id} --api-sock {api_sock}"
            ),
            Duration::from_secs(60),
        );
        let start = Instant::now();
        host.check(
            &format!(
                "{memtide} vm create --api-sock {api_sock} --id {id} --kernel {k} --initrd {i} \
                 --cmdline '{c}' --vcpus 1 --serial-socket /tmp/{id}.console.sock --numa {numa}",
                k = host.guest_kernel(),
                i = host.guest_initrd(),
                c = memtide_testbed::image::DEFAULT_CMDLINE,
            ),
            Duration::from_secs(60),
        )?;
        let mut guest = host.spawn_guest(
            id,
            &[
                memtide.to_string(),
                "vm".into(),
                "console".into(),
                id.into(),
                "--api-sock".into(),
                api_sock.into(),
            ],
        )?;
        guest.wait_agent(AGENT_TIMEOUT)?;
        say(&format!(
            "{id}: agent ready {:.1} s after create (console socket)",
            start.elapsed().as_secs_f64()
        ));
        Ok(guest)
    })
}

/// Shuts VM `id` down and deletes it; its console bridge ends with it.
pub fn delete(host: &KvmHost, memtide: &str, api_sock: &str, id: &str) -> Result<()> {
    host.check(
        &format!(
            "{memtide} vm shutdown {id} --api-sock {api_sock} && \
             {memtide} vm delete {id} --api-sock {api_sock}"
        ),
        Duration::from_secs(60),
    )
    .map(|_| ())
}

/// `memtide pool --audit --json`: fails with the audit's problems unless it is consistent;
/// returns `(allocated, owned)` pages.
pub fn audit(host: &KvmHost, memtide: &str, api_sock: &str) -> Result<(u64, u64)> {
    let out = host.run(
        &format!("{memtide} pool --audit --json --api-sock {api_sock}"),
        Duration::from_secs(30),
    )?;
    let text = out.text();
    if out.status != 0 || !text.contains("\"consistent\": true") {
        return Err(Error::Config(format!(
            "pool audit failed (exit {}): {text}",
            out.status
        )));
    }
    match (num(&text, "allocated_pages"), num(&text, "owned_pages")) {
        (Some(a), Some(o)) => Ok((a, o)),
        _ => Err(Error::Config(format!("no page counts in {text}"))),
    }
}
