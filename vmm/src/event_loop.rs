//! The VM's event loop (event-manager): the exit EventFd, stdin → serial console input, and
//! SIGTERM/SIGINT (through a signalfd) → a clean stop.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use crate::devices::serial::SerialDevice;
use crate::exit::{ExitReason, ExitSignal};

/// A subscriber as the manager holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// Creating the epoll instance or registering an fd failed.
    #[error("event manager: {0:?}")]
    Manager(event_manager::Error),
    /// Setting up the signalfd failed.
    #[error("signalfd for SIGTERM/SIGINT: {0}")]
    Signal(std::io::Error),
}

/// Stops the loop when the VM's exit is requested.
struct ExitHandler {
    exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for ExitHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.exit.eventfd(), EventSet::IN));
    }
}

/// Feeds the VMM's stdin to the serial console, holding back what the UART FIFO cannot take.
pub struct StdinHandler {
    fd: RawFd,
    serial: Arc<Mutex<SerialDevice>>,
    pending: VecDeque<u8>,
    open: bool,
}

impl StdinHandler {
    /// Reads `fd` (normally 0) into `serial`.
    pub fn new(fd: RawFd, serial: Arc<Mutex<SerialDevice>>) -> Self {
        StdinHandler {
            fd,
            serial,
            pending: VecDeque::new(),
            open: true,
        }
    }

    /// Moves pending bytes into the UART as far as its FIFO allows.
    pub fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = self.pending.iter().copied().collect();
        let n = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(&bytes);
        self.pending.drain(..n);
    }
}

impl MutEventSubscriber for StdinHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        // SAFETY: reading into a local buffer of the given length from our stdin fd.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            self.pending.extend(&buf[..n as usize]);
            self.flush_pending();
        } else if n == 0 || events.event_set().contains(EventSet::HANG_UP) {
            // EOF: stop watching (a closed pipe would otherwise be ready forever).
            self.open = false;
            let _ = ops.remove(Events::new_raw(self.fd, EventSet::IN));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null: then there is simply no input.
        if ops.add(Events::new_raw(self.fd, EventSet::IN)).is_err() {
            self.open = false;
        }
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and returns their set. Threads inherit the
/// mask of the thread that spawns them, so a VMM that handles these signals through the event
/// loop's signalfd calls this before it spawns any thread (device helpers such as the
/// balloon's stats poller are spawned while the VM is built): a thread with the signals
/// unblocked would take a process-directed SIGTERM and die of it, uncleanly.
pub fn block_exit_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset manipulation on a local, zero-initialised set; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// Turns SIGTERM/SIGINT into a clean stop. The signals are blocked in the thread that
/// creates it (and the vCPU threads it spawns afterwards) and read from a signalfd; see
/// [`block_exit_signals`] for threads spawned before.
struct SignalHandler {
    fd: OwnedFd,
    exit: Arc<ExitSignal>,
}

impl SignalHandler {
    fn new(exit: Arc<ExitSignal>) -> Result<Self, EventLoopError> {
        let set = block_exit_signals().map_err(EventLoopError::Signal)?;
        // SAFETY: `set` is a valid, initialised signal set; -1 asks for a new signalfd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(EventLoopError::Signal(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh signalfd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalHandler { fd, exit })
    }
}

impl MutEventSubscriber for SignalHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        // SAFETY: reading one siginfo record into a buffer of exactly its size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
        if n > 0 {
            self.exit.request(ExitReason::Stopped);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.fd, EventSet::IN));
    }
}

/// One VM's event loop.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    exit: Arc<ExitSignal>,
    stdin: Option<Arc<Mutex<StdinHandler>>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
}

impl EventLoop {
    /// A loop that ends when `exit` is requested; with `signals`, SIGTERM/SIGINT request a
    /// stop (call it before spawning vCPU threads so they inherit the blocked mask).
    pub fn new(exit: Arc<ExitSignal>, signals: bool) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new().map_err(EventLoopError::Manager)?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitHandler { exit: exit.clone() })));
        if signals {
            let h = SignalHandler::new(exit.clone())?;
            manager.add_subscriber(Arc::new(Mutex::new(h)));
        }
        Ok(EventLoop {
            manager,
            exit,
            stdin: None,
        })
    }

    /// Feeds `fd` to the serial console.
    pub fn add_serial_input(&mut self, fd: RawFd, serial: Arc<Mutex<SerialDevice>>) {
        let h = Arc::new(Mutex::new(StdinHandler::new(fd, serial)));
        self.manager.add_subscriber(h.clone());
        self.stdin = Some(h);
    }

    /// Adds a device's subscriber (e.g. its queue ioeventfds).
    pub fn add_subscriber(&mut self, subscriber: Subscriber) {
        self.manager.add_subscriber(subscriber);
    }

    /// Runs until the exit signal is raised.
    pub fn run(&mut self) -> Result<(), EventLoopError> {
        while !self.exit.is_requested() {
            self.manager
                .run_with_timeout(50)
                .map_err(EventLoopError::Manager)?;
            if let Some(s) = &self.stdin {
                s.lock().unwrap_or_else(|p| p.into_inner()).flush_pending();
            }
        }
        Ok(())
    }
}
