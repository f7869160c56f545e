//! Time as an input.
//!
//! proto never reads a clock. Every entry point takes `now: Timestamp`, supplied by the driver
//! from a monotonic clock. A `Timestamp` is a count of microseconds since an origin the driver
//! chooses (its start, usually); only differences between timestamps of one node mean anything.
//! All arithmetic saturates, so a huge duration yields "never" rather than a wrap-around, and
//! "no deadline" is spelled `Option::<Timestamp>::None`.

use core::fmt;
use core::ops::{Add, Sub};
use core::time::Duration;

/// A point in time on the driver's monotonic clock, in microseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The driver's origin.
    pub const ZERO: Timestamp = Timestamp(0);
    /// The last representable instant; arithmetic saturates here.
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Timestamp {
        Timestamp(micros)
    }

    /// A timestamp `millis` milliseconds after the origin (saturating).
    pub const fn from_millis(millis: u64) -> Timestamp {
        Timestamp(millis.saturating_mul(1_000))
    }

    /// A timestamp `secs` seconds after the origin (saturating).
    pub const fn from_secs(secs: u64) -> Timestamp {
        Timestamp(secs.saturating_mul(1_000_000))
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_micros(d)))
    }

    /// `self - d`, saturating at [`Timestamp::ZERO`].
    pub fn saturating_sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_micros(d)))
    }
}

/// A duration in whole microseconds, saturating at `u64::MAX`.
fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: Duration) -> Timestamp {
        self.saturating_sub(d)
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;
    fn sub(self, earlier: Timestamp) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Keeps a node's notion of "now" monotonic.
///
/// Drivers should pass a monotonic clock, but a `now` earlier than one already seen (a clock
/// stepped back, a driver bug) is clamped to the latest seen value rather than trusted: timers
/// must never move backwards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    latest: Timestamp,
}

impl Clock {
    /// A clock that has seen `now`.
    pub fn new(now: Timestamp) -> Clock {
        Clock { latest: now }
    }

    /// Observes `now` and returns the value to use: `max(now, latest seen)`.
    pub fn observe(&mut self, now: Timestamp) -> Timestamp {
        if now > self.latest {
            self.latest = now;
        }
        self.latest
    }

    /// The latest time observed.
    pub fn latest(&self) -> Timestamp {
        self.latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp::MAX + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(
            Timestamp::from_secs(1) - Duration::from_secs(2),
            Timestamp::ZERO
        );
        assert_eq!(
            Timestamp::from_secs(1) - Timestamp::from_secs(2),
            Duration::ZERO
        );
        assert_eq!(Timestamp::ZERO + Duration::MAX, Timestamp::MAX);
        assert_eq!(Timestamp::from_secs(u64::MAX), Timestamp::MAX);
        assert_eq!(
            Timestamp::from_millis(1500) - Timestamp::from_secs(1),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn clock_clamps_backward_steps() {
        let mut clock = Clock::new(Timestamp::from_secs(10));
        assert_eq!(
            clock.observe(Timestamp::from_secs(5)),
            Timestamp::from_secs(10)
        );
        assert_eq!(
            clock.observe(Timestamp::from_secs(11)),
            Timestamp::from_secs(11)
        );
        assert_eq!(clock.latest(), Timestamp::from_secs(11));
    }

    #[test]
    fn debug_shows_seconds() {
        assert_eq!(
            format!("{:?}", Timestamp::from_micros(1_000_123)),
            "1.000123s"
        );
    }
}
