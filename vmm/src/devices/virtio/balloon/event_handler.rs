//! Asking the driver for fresh statistics at the configured interval, in either of two ways:
//! [`StatsTimer`], a timerfd subscriber for an event loop (besides the generic
//! [`crate::devices::virtio::event_handler::QueueNotifyHandler`]), or [`StatsPoller`], a
//! thread of its own for a VMM whose event loop takes no device subscribers.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

use super::backend::BalloonBackend;
use super::device::VirtioBalloon;
use crate::devices::virtio::mmio::MmioTransport;

/// Errors setting up the statistics timer.
#[derive(Debug, thiserror::Error)]
pub enum StatsTimerError {
    /// The interval is zero (a zero timerfd interval disarms the timer).
    #[error("statistics interval must be positive, got {0:?}")]
    ZeroInterval(Duration),
    /// Creating or arming the timerfd failed.
    #[error("statistics timer: {0}")]
    Timer(std::io::Error),
}

/// How often the timer fires until the guest's first statistics arrived (when the interval
/// is longer): the driver primes the stats queue while it starts, and the first tick after
/// that picks the values up, so they should not wait a whole long interval.
pub const STARTUP_PERIOD: Duration = Duration::from_secs(1);

/// Event-loop subscriber: every interval, the device returns its held statistics buffer to
/// the driver (through [`MmioTransport::notify`] of the stats queue), which answers with
/// fresh values on the stats queue. Until the first values arrived it fires every
/// [`STARTUP_PERIOD`] (or the interval, if shorter).
pub struct StatsTimer<B: BalloonBackend> {
    transport: Arc<Mutex<MmioTransport<VirtioBalloon<B>>>>,
    timer: TimerFd,
    interval: Duration,
    starting: bool,
}

impl<B: BalloonBackend> StatsTimer<B> {
    /// A timer firing every `interval` for the balloon behind `transport`.
    pub fn new(
        transport: Arc<Mutex<MmioTransport<VirtioBalloon<B>>>>,
        interval: Duration,
    ) -> Result<Self, StatsTimerError> {
        if interval.is_zero() {
            return Err(StatsTimerError::ZeroInterval(interval));
        }
        let mut timer = TimerFd::new().map_err(|e| StatsTimerError::Timer(e.into()))?;
        let first = interval.min(STARTUP_PERIOD);
        timer
            .reset(first, Some(first))
            .map_err(|e| StatsTimerError::Timer(e.into()))?;
        Ok(StatsTimer {
            transport,
            timer,
            interval,
            starting: first != interval,
        })
    }

    /// Whether the timer still fires at the start-up period.
    pub fn is_starting(&self) -> bool {
        self.starting
    }

    /// The polling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One tick: ask the driver for statistics if the device runs with a stats queue.
    /// Returns whether the stats queue was notified.
    pub fn tick(&self) -> bool {
        request_stats_now(&self.transport)
    }

    fn has_stats(&self) -> bool {
        has_stats(&self.transport)
    }
}

/// Asks the driver of the balloon behind `transport` for statistics now, if the device runs
/// with a stats queue: the held buffer goes back (through [`MmioTransport::notify`] of the
/// stats queue). Returns whether the stats queue was notified.
pub fn request_stats_now<B: BalloonBackend>(
    transport: &Mutex<MmioTransport<VirtioBalloon<B>>>,
) -> bool {
    let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
    if !t.is_activated() {
        return false;
    }
    let Some(index) = t.device_mut().request_stats() else {
        return false;
    };
    t.notify(index as u32);
    true
}

fn has_stats<B: BalloonBackend>(transport: &Mutex<MmioTransport<VirtioBalloon<B>>>) -> bool {
    let t = transport.lock().unwrap_or_else(|p| p.into_inner());
    t.device().stats().is_some()
}

/// A thread that asks for statistics every interval (every [`STARTUP_PERIOD`] until the
/// first values arrived, as [`StatsTimer`]). [`StatsPoller::stop`] stops and joins it;
/// dropping it only tells it to stop (it ends at its next wake-up), so dropping is safe while
/// holding the transport lock.
pub struct StatsPoller {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StatsPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsPoller")
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl StatsPoller {
    /// Starts polling the balloon behind `transport` every `interval`.
    pub fn spawn<B: BalloonBackend + 'static>(
        transport: Arc<Mutex<MmioTransport<VirtioBalloon<B>>>>,
        interval: Duration,
    ) -> Result<Self, StatsTimerError> {
        if interval.is_zero() {
            return Err(StatsTimerError::ZeroInterval(interval));
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("balloon-stats".into())
            .spawn(move || {
                let mut period = interval.min(STARTUP_PERIOD);
                let (lock, cvar) = &*flag;
                loop {
                    {
                        // The stop flag is not held while ticking: a thread that drops the
                        // poller while holding the transport lock must not deadlock.
                        let stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                        let (stopped, _) = cvar
                            .wait_timeout_while(stopped, period, |s| !*s)
                            .unwrap_or_else(|p| p.into_inner());
                        if *stopped {
                            return;
                        }
                    }
                    request_stats_now(&transport);
                    if period != interval && has_stats(&transport) {
                        period = interval;
                    }
                }
            })
            .map_err(StatsTimerError::Timer)?;
        Ok(StatsPoller {
            stop,
            thread: Some(thread),
        })
    }
}

impl StatsPoller {
    /// Stops the thread and waits for it. Must not be called while holding the transport
    /// lock (the thread may be waiting for it).
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal_stop(&self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cvar.notify_all();
    }
}

impl Drop for StatsPoller {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

impl<B: BalloonBackend> MutEventSubscriber for StatsTimer<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            let _ = ops.remove(events);
            return;
        }
        // Readable: the timer expired at least once; reading clears it.
        if self.timer.wait().is_err() {
            return;
        }
        self.tick();
        if self.starting && self.has_stats() {
            // Values flow: from now on at the configured interval.
            if self.timer.reset(self.interval, Some(self.interval)).is_ok() {
                self.starting = false;
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }
}
