//! memtide's guest agent binary: prints `AGENT ready`, then answers commands from stdin (the
//! guest's serial console) until `poweroff` or end of input. See the library docs.

use memtide_guest_agent::agent::{Agent, Next};
use memtide_guest_agent::procfs::Sources;
use memtide_guest_agent::protocol::{Record, VERSION};
use std::io::{self, BufRead, Write};

fn main() {
    let stdout = io::stdout();
    let mut agent = Agent::new(Sources::system());
    let emit = |recs: &[Record]| {
        let mut o = stdout.lock();
        for r in recs {
            // A console write error leaves nobody to tell: ignore it.
            let _ = writeln!(o, "{r}");
        }
        let _ = o.flush();
    };
    emit(&[Record::Ready { version: VERSION }]);
    let stdin = io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => continue,
            Err(_) => break,
        }
        let (reply, next) = agent.handle(&line);
        emit(&reply);
        if next == Next::Exit {
            break;
        }
    }
}
