//! memtide's guest agent (runs inside test guests).

fn main() {}
