//! Leases: a stack's lock ends unless its holder renews it.
//!
//! A lock records when its lease ends (`expires_ms`, wall-clock milliseconds). Its
//! holder renews it every third of the lease; another process takes it over only once
//! that time has passed by its own clock. The holder, for its part, stops writing once
//! four fifths of the lease have passed since its last renewal began, by its monotonic
//! clock, and a fifth before the end it wrote, by the wall clock (which, unlike the
//! monotonic one, goes on while a machine is suspended): so long as hosts' clocks agree
//! within a fifth of the lease (NTP keeps them within milliseconds), a holder has
//! stopped before anyone may take over.
//!
//! Every write checks the lock as stored too (the file store under an OS lock on the
//! stack's `lock.guard`; the S3 store by conditional writes, see its module): a holder
//! whose lock was cleared or taken over writes nothing more and gets
//! [`StateError::LockLost`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::store::LockInfo;
use crate::StateError;

/// The lease a store gives its locks unless told otherwise: 15 s, as Kubernetes'
/// leader election does. A holder that dies is taken over from within this time.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// The environment variable that sets the lease of the stores [`open`](crate::open)
/// makes, in seconds (`2`, `0.5`).
pub const LEASE_ENV: &str = "CAIRN_LEASE_SECS";

/// The shortest lease a store gives: renewals every third of it must be possible.
const MIN_LEASE: Duration = Duration::from_millis(300);

/// The lease [`LEASE_ENV`] asks for, [`DEFAULT_LEASE`] if it is unset.
pub fn lease_from_env() -> Result<Duration, StateError> {
    match std::env::var(LEASE_ENV) {
        Err(_) => Ok(DEFAULT_LEASE),
        Ok(text) => parse_lease(&text),
    }
}

fn parse_lease(text: &str) -> Result<Duration, StateError> {
    let bad = || StateError::BadLease(format!("{LEASE_ENV}={text:?} is not a lease: give seconds, such as 15 or 2.5, of at least {} ms", MIN_LEASE.as_millis()));
    let secs: f64 = text.trim().parse().map_err(|_| bad())?;
    let lease = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    if lease < MIN_LEASE {
        return Err(bad());
    }
    Ok(lease)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Wall-clock milliseconds when a lease of `lease` taken now ends.
pub(crate) fn expiry_from_now(lease: Duration) -> u64 {
    now_ms() + lease.as_millis() as u64
}

/// What a lock's lease is, as seen from this process now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Its holder renewed it recently: nobody else may take the stack.
    Live {
        /// Until it expires, unless renewed.
        remaining: Duration,
        /// Its holder ran on this host and its process is gone: the lease will expire
        /// (or `state unlock` clears it now).
        holder_gone: bool,
    },
    /// Not renewed in time: the next process to lock the stack takes it over.
    Expired {
        /// How long ago it expired.
        ago: Duration,
    },
    /// A lock without a lease, written by a Cairn from before leases: held until
    /// `state unlock`.
    Unleased {
        /// Its holder ran on this host and its process is gone.
        holder_gone: bool,
    },
}

impl Lease {
    pub(crate) fn of(info: &LockInfo) -> Lease {
        if info.expires_ms == 0 {
            return Lease::Unleased { holder_gone: holder_gone(info) };
        }
        let now = now_ms();
        if now >= info.expires_ms {
            Lease::Expired { ago: Duration::from_millis(now - info.expires_ms) }
        } else {
            Lease::Live { remaining: Duration::from_millis(info.expires_ms - now), holder_gone: holder_gone(info) }
        }
    }

    /// Whether another process may take the stack over now.
    pub fn is_expired(self) -> bool {
        matches!(self, Lease::Expired { .. })
    }

    /// The lease as a user reads it, e.g. "its lease expires in 12 s".
    pub fn describe(self, pid: u32) -> String {
        let gone = |g: bool| if g { format!("; process {pid} is no longer running on this host") } else { String::new() };
        match self {
            Lease::Live { remaining, holder_gone } => format!("its lease expires in {:.1} s unless renewed{}", remaining.as_secs_f64(), gone(holder_gone)),
            Lease::Expired { ago } => format!("its lease expired {:.1} s ago", ago.as_secs_f64()),
            Lease::Unleased { holder_gone } => format!("it has no lease (written by an older Cairn){}", gone(holder_gone)),
        }
    }
}

/// Whether the holder ran on this host and its process is gone. Only said when known:
/// another host's processes cannot be seen from here, and without `/proc` neither can
/// this one's.
fn holder_gone(info: &LockInfo) -> bool {
    if info.host != crate::store::hostname() || info.pid == 0 || !std::path::Path::new("/proc/self").exists() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{}/stat", info.pid)) {
        // A zombie (state `Z`, after the command) has exited and not yet been reaped.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Proof of holding a stack's lock; pass it to the writes. Clones share the lease's
/// clock: a renewal through one extends them all, and a loss seen by one stops them all.
#[derive(Clone, Debug)]
pub struct Lock {
    /// The stack.
    pub stack: String,
    /// The lock as written when it was taken.
    pub info: LockInfo,
    clock: Arc<LeaseClock>,
}

#[derive(Debug)]
struct LeaseClock {
    duration: Duration,
    /// This holder writes nothing after this instant unless it renews first: four
    /// fifths of the lease after its last renewal began.
    writable_until: Mutex<Instant>,
    /// The lease's end as last written, wall-clock milliseconds.
    expires_ms: AtomicU64,
    lost: AtomicBool,
    /// Told when the lock is found lost.
    lost_tx: tokio::sync::watch::Sender<bool>,
}

impl Lock {
    /// A lock on `stack` as written (`info`), whose lease of `lease` was taken at
    /// `taken`, an instant from before the write: for [`Store`](crate::Store)
    /// implementations.
    pub fn new(stack: impl Into<String>, info: LockInfo, lease: Duration, taken: Instant) -> Lock {
        let clock = LeaseClock {
            duration: lease,
            writable_until: Mutex::new(taken + writable_for(lease)),
            expires_ms: AtomicU64::new(info.expires_ms),
            lost: AtomicBool::new(false),
            lost_tx: tokio::sync::watch::channel(false).0,
        };
        Lock { stack: stack.into(), info, clock: Arc::new(clock) }
    }

    /// The lease's length.
    pub fn lease(&self) -> Duration {
        self.clock.duration
    }

    /// How often the holder renews: a third of the lease, so two renewals in a row may
    /// fail before writing stops.
    pub fn renew_every(&self) -> Duration {
        self.clock.duration / 3
    }

    /// Records a renewal that began at `started` and succeeded, writing the lease's end
    /// as `expires_ms`.
    pub fn renewed(&self, started: Instant, expires_ms: u64) {
        let mut until = self.clock.writable_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *until = (*until).max(started + writable_for(self.clock.duration));
        self.clock.expires_ms.fetch_max(expires_ms, Ordering::SeqCst);
    }

    /// Marks the lock lost: it was taken over or cleared. Every later write of this
    /// holder is refused, and [`Lock::lost`] resolves.
    pub fn mark_lost(&self) {
        self.clock.lost.store(true, Ordering::SeqCst);
        self.clock.lost_tx.send_replace(true);
    }

    /// Resolves once the lock is found lost (by a renewal or a refused write); never
    /// while it is held.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut lost = self.clock.lost_tx.subscribe();
        async move {
            if lost.wait_for(|lost| *lost).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether the lock was found lost.
    pub fn is_lost(&self) -> bool {
        self.clock.lost.load(Ordering::SeqCst)
    }

    /// Ok while this holder may write: the lock was not found lost, and its last
    /// renewal is recent enough that nobody may have taken it over.
    pub fn check(&self) -> Result<(), StateError> {
        if self.is_lost() {
            return Err(self.lost_error());
        }
        if self.writable_for().is_zero() {
            return Err(StateError::LeaseExpired { stack: self.stack.clone(), lease: self.clock.duration });
        }
        Ok(())
    }

    /// How much longer this holder may write without renewing: zero once it must stop.
    /// A write sent to a remote store is abandoned when this runs out: unless the store
    /// already had the whole request, it cannot land after someone may have taken over.
    pub fn writable_for(&self) -> Duration {
        let until = *self.clock.writable_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let monotonic = until.saturating_duration_since(Instant::now());
        // The wall clock goes on while the machine is suspended; the monotonic one not.
        let wall_end = self.clock.expires_ms.load(Ordering::SeqCst).saturating_sub((self.clock.duration / 5).as_millis() as u64);
        let wall = Duration::from_millis(wall_end.saturating_sub(now_ms()));
        monotonic.min(wall)
    }

    pub(crate) fn lost_error(&self) -> StateError {
        StateError::LockLost(self.stack.clone())
    }

    /// The lock as stored after a renewal now: its lease ends a full lease from now.
    pub(crate) fn renewed_info(&self) -> LockInfo {
        LockInfo { expires_ms: expiry_from_now(self.clock.duration), ..self.info.clone() }
    }
}

/// How long after a renewal begins its holder may write: four fifths of the lease.
fn writable_for(lease: Duration) -> Duration {
    lease * 4 / 5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_parse_from_seconds_and_refuse_nonsense() {
        assert_eq!(parse_lease("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_lease(" 0.5 ").unwrap(), Duration::from_millis(500));
        for bad in ["", "fast", "-1", "0", "0.1", "inf"] {
            let err = parse_lease(bad).unwrap_err().to_string();
            assert!(err.contains("CAIRN_LEASE_SECS") && err.contains("at least 300 ms"), "{bad}: {err}");
        }
    }

    fn info(host: &str, pid: u32, expires_ms: u64) -> LockInfo {
        LockInfo { host: host.to_owned(), pid, expires_ms, ..LockInfo::here("up", DEFAULT_LEASE) }
    }

    #[test]
    fn a_lease_is_live_until_it_expires_and_says_when_its_holder_is_gone() {
        let here = crate::store::hostname();
        let me = std::process::id();
        assert!(matches!(Lease::of(&info(&here, me, now_ms() + 60_000)), Lease::Live { holder_gone: false, .. }));
        assert!(Lease::of(&info(&here, me, now_ms() - 1)).is_expired());
        assert_eq!(Lease::of(&info(&here, me, 0)), Lease::Unleased { holder_gone: false });
        // A pid above Linux's maximum (2^22) runs nowhere.
        let gone = Lease::of(&info(&here, 4_194_304 + 7, now_ms() + 60_000));
        assert!(matches!(gone, Lease::Live { holder_gone: true, .. }), "{gone:?}");
        assert!(gone.describe(4_194_311).contains("process 4194311 is no longer running on this host"));
        // Another host's processes cannot be seen from here.
        assert!(matches!(Lease::of(&info("elsewhere.example", 4_194_311, now_ms() + 60_000)), Lease::Live { holder_gone: false, .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_stops_writing_four_fifths_into_an_unrenewed_lease() {
        let lease = Duration::from_secs(10);
        let lock = Lock::new("dev", LockInfo::here("watch", lease), lease, Instant::now());
        assert!(lock.check().is_ok());
        tokio::time::advance(Duration::from_millis(7_900)).await;
        assert!(lock.check().is_ok());
        // A renewal that began at 7.9 s moves the end to 15.9 s.
        lock.renewed(Instant::now(), expiry_from_now(lease));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(lock.check().is_ok());
        tokio::time::advance(Duration::from_secs(2)).await;
        let err = lock.check().unwrap_err();
        assert!(matches!(err, StateError::LeaseExpired { .. }), "{err}");
        // Clones share the clock: one renewal or loss counts for all.
        let clone = lock.clone();
        lock.renewed(Instant::now(), expiry_from_now(lease));
        assert!(clone.check().is_ok());
        clone.mark_lost();
        assert!(matches!(lock.check(), Err(StateError::LockLost(_))));
        tokio::time::timeout(Duration::from_secs(1), lock.lost()).await.expect("a loss is told at once");
    }

    #[test]
    fn a_holder_stops_writing_a_fifth_before_the_end_it_wrote_by_the_wall_clock() {
        // As after a suspend: the monotonic clock says the lease is fresh, the wall
        // clock that its end has nearly come. A minute's lease stops 12 s before its end;
        // the margins leave a slow test host seconds to spare.
        let lease = Duration::from_secs(60);
        let info = LockInfo { expires_ms: now_ms() + 6_000, ..LockInfo::here("watch", lease) };
        let lock = Lock::new("dev", info, lease, Instant::now());
        assert!(matches!(lock.check(), Err(StateError::LeaseExpired { .. })));
        let info = LockInfo { expires_ms: now_ms() + 30_000, ..LockInfo::here("watch", lease) };
        assert!(Lock::new("dev", info, lease, Instant::now()).check().is_ok());
    }
}
