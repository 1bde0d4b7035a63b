//! Password guessing over SMTP AUTH: failed attempts counted per client address, and how many
//! passwords are checked at once.
//!
//! Each check is an Argon2 verification, slow and large on purpose: tens of milliseconds of a
//! core and the hash's memory cost (19 MiB with the parameters of `mail2sms hash-password`).
//! The session's own limit (three failures close the connection) does not stop a guesser that
//! opens connections in turn or in parallel. Two limits here do:
//!
//! - A client address that failed `smtp.auth_failures_per_client` times within
//!   `smtp.auth_lockout_secs` is answered `454 4.7.0` at its next AUTH, with no check made,
//!   until the first of those failures is that old. An IPv6 client is counted by its /64, which
//!   one host or site usually holds whole; an IPv4-mapped address is its IPv4 address.
//! - At most one check per core runs at a time ([`AuthGuard::check`]); others wait for a turn,
//!   so that a burst of AUTH commands takes neither the memory of hundreds of checks at once
//!   nor the cores that sessions and the store need.
//!
//! The counting is sans-IO: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Client addresses remembered at most: beyond it, the ones whose window has passed are
/// forgotten, then the one whose window started first (about 3 MB of failures, whatever the
/// number of addresses a guesser sends from).
const MAX_CLIENTS: usize = 65_536;

/// Who failures are counted against: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Client {
    fn from(ip: IpAddr) -> Client {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Client::V4(u32::from(v4)),
            IpAddr::V6(v6) => Client::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// One client's failures in its current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

/// Failed AUTH attempts per client, and the turns for password checks (see the module's
/// documentation).
#[derive(Debug)]
pub struct AuthGuard {
    limit: u32,
    window: Duration,
    clients: Mutex<HashMap<Client, Failures>>,
    checks: Semaphore,
}

impl AuthGuard {
    /// `limit` failures per client within `window`; `parallel` checks at once (at least one).
    pub fn new(limit: u32, window: Duration, parallel: usize) -> AuthGuard {
        AuthGuard {
            limit,
            window,
            clients: Mutex::new(HashMap::new()),
            checks: Semaphore::new(parallel.max(1)),
        }
    }

    /// Whether `ip` may have a password checked at `now`: `Err` holds how long until it may.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        match clients.get(&Client::from(ip)) {
            Some(f) if f.count >= self.limit => {
                let passed = now.saturating_duration_since(f.since);
                if passed < self.window {
                    Err(self.window - passed)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed check for `ip` at `now`. Returns whether this failure is the one that
    /// reached the limit (worth a line in the log: the client is refused from now on).
    pub fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let key = Client::from(ip);
        if !clients.contains_key(&key) && clients.len() >= MAX_CLIENTS {
            let window = self.window;
            clients.retain(|_, f| now.saturating_duration_since(f.since) < window);
            if clients.len() >= MAX_CLIENTS
                && let Some(oldest) = clients.iter().min_by_key(|(_, f)| f.since).map(|(k, _)| *k)
            {
                clients.remove(&oldest);
            }
        }
        let f = clients.entry(key).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.saturating_duration_since(f.since) >= self.window {
            *f = Failures {
                count: 0,
                since: now,
            };
        }
        f.count = f.count.saturating_add(1);
        f.count == self.limit
    }

    /// A client that gave the right password starts again from no failures.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.remove(&Client::from(ip));
    }

    /// Runs `verify` (a password check) on the blocking threads once a turn is free, and
    /// returns its answer (false if it could not run).
    pub async fn check<F>(&self, verify: F) -> bool
    where
        F: FnOnce() -> bool + Send + 'static,
    {
        let Ok(_turn) = self.checks.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(verify).await.unwrap_or(false)
    }

    /// How many clients have failures remembered.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.clients.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const WINDOW: Duration = Duration::from_secs(600);

    #[test]
    fn a_client_is_refused_from_its_limit_until_its_first_failure_is_a_window_old() {
        let g = AuthGuard::new(3, WINDOW, 1);
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        // (seconds after t0, failed at that time?, admitted after it?)
        let steps: &[(u64, bool, Result<(), Duration>)] = &[
            (0, true, Ok(())),
            (10, true, Ok(())),
            (20, true, Err(Duration::from_secs(580))),
            (100, false, Err(Duration::from_secs(500))),
            (599, false, Err(Duration::from_secs(1))),
            (600, false, Ok(())),
            // A new window starts with the next failure.
            (601, true, Ok(())),
        ];
        for (i, (at, fail, admitted)) in steps.iter().enumerate() {
            let now = t0 + Duration::from_secs(*at);
            if *fail {
                g.failed(a, now);
            }
            assert_eq!(g.admit(a, now), *admitted, "step {i} at {at} s");
        }
    }

    #[test]
    fn the_failure_that_reaches_the_limit_is_told() {
        let g = AuthGuard::new(2, WINDOW, 1);
        let now = Instant::now();
        let a = ip("192.0.2.7");
        assert!(!g.failed(a, now));
        assert!(g.failed(a, now));
        assert!(!g.failed(a, now));
    }

    #[test]
    fn clients_are_counted_by_address_and_ipv6_by_slash_64() {
        let g = AuthGuard::new(1, WINDOW, 1);
        let now = Instant::now();
        g.failed(ip("192.0.2.7"), now);
        g.failed(ip("2001:db8:1:2::1"), now);
        // (address, admitted?)
        let table = [
            ("192.0.2.7", false),
            ("::ffff:192.0.2.7", false),
            ("192.0.2.8", true),
            ("2001:db8:1:2::1", false),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", false),
            ("2001:db8:1:3::1", true),
        ];
        for (addr, admitted) in table {
            assert_eq!(g.admit(ip(addr), now).is_ok(), admitted, "{addr}");
        }
    }

    #[test]
    fn the_right_password_clears_the_failures() {
        let g = AuthGuard::new(2, WINDOW, 1);
        let now = Instant::now();
        let a = ip("192.0.2.7");
        g.failed(a, now);
        g.succeeded(a);
        g.failed(a, now);
        assert!(g.admit(a, now).is_ok());
        g.failed(a, now);
        assert!(g.admit(a, now).is_err());
    }

    #[test]
    fn failures_from_many_addresses_are_remembered_within_a_bound() {
        let g = AuthGuard::new(1, WINDOW, 1);
        let t0 = Instant::now();
        let first = IpAddr::from([10, 0, 0, 0]);
        g.failed(first, t0);
        for n in 1..(MAX_CLIENTS as u32 + 100) {
            g.failed(
                IpAddr::from(((10u32 << 24) | n).to_be_bytes()),
                t0 + Duration::from_millis(1),
            );
        }
        assert_eq!(g.remembered(), MAX_CLIENTS);
        // The one that failed first made room.
        assert!(g.admit(first, t0).is_ok());
        let last = IpAddr::from(((10u32 << 24) | (MAX_CLIENTS as u32 + 99)).to_be_bytes());
        assert!(g.admit(last, t0).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_checks_run_at_once_than_there_are_turns() {
        let g = Arc::new(AuthGuard::new(3, WINDOW, 2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (g, running, most) = (g.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                g.check(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                    running.fetch_sub(1, Ordering::SeqCst);
                    true
                })
                .await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
