//! memtide's front ends: the `memtide` command line (one module per subcommand under
//! [`cli`]) and the REST API ([`server`], its [`client`], the request bodies in [`model`]).
//! Front ends only parse and validate what the user says and turn it into calls on the
//! allocator (zone layout, pool) and the VMM's control plane; they own no state.

pub mod cli;
pub mod client;
pub mod hosted;
pub mod model;
pub mod server;
