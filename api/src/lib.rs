//! memtide's front ends: the `memtide` command line (one module per subcommand under
//! [`cli`]) and, later, the REST API. Front ends only parse and validate what the user says
//! and turn it into calls on the allocator (zone layout, pool) and the VMM; they own no state.

pub mod cli;
