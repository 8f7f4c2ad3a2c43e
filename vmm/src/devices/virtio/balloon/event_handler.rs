//! The balloon's epoll glue besides queue notifications (which the generic
//! [`crate::devices::virtio::event_handler::QueueNotifyHandler`] handles): a timerfd that asks
//! the driver for fresh statistics at the configured interval.

use std::sync::{Arc, Mutex};
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
        let mut t = self.transport.lock().unwrap_or_else(|p| p.into_inner());
        if !t.is_activated() {
            return false;
        }
        let Some(index) = t.device_mut().request_stats() else {
            return false;
        };
        t.notify(index as u32);
        true
    }

    fn has_stats(&self) -> bool {
        let t = self.transport.lock().unwrap_or_else(|p| p.into_inner());
        t.device().stats().is_some()
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
