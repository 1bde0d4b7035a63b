//! Passive configurations: what this site does only while a peer is detected down, as in
//! Ozeki's live cluster (a peer's IMAP mailbox picked up here while the peer cannot).
//!
//! The peer's state is the router's (`RouterState::site_up`, set by the peer's link). The link
//! marks a peer down from this process's start until its first bind succeeds, so "down" at
//! start means "not heard from yet", not "detected down": a passive configuration that
//! trusted it would pick up the peer's mailbox for the first moments of every start, side by
//! side with the peer. So [`Standby`] activates only for a peer that was up and went down, or
//! that has stayed unreachable for a `grace` (the keepalive's patience) since the start. It
//! steps back as soon as the peer is up again.
//!
//! Sans-IO: the caller reads the state and the time; [`Standby::observe`] decides.

use std::time::Duration;

/// Whether a passive configuration for one peer should be active now.
#[derive(Debug, Clone)]
pub struct Standby {
    grace: Duration,
    /// The peer was seen up since the start: its being down now was detected.
    seen_up: bool,
}

impl Standby {
    /// `grace`: how long a peer never heard from since the start must stay so before it
    /// counts as down.
    pub fn new(grace: Duration) -> Self {
        Standby {
            grace,
            seen_up: false,
        }
    }

    /// `up`: the peer's state now (`None`: no link has said anything yet). `since_start`: the
    /// time since this process started watching. Returns whether to be active.
    pub fn observe(&mut self, up: Option<bool>, since_start: Duration) -> bool {
        match up {
            Some(true) => {
                self.seen_up = true;
                false
            }
            Some(false) | None => self.seen_up || since_start >= self.grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (peer state, time since start in ms, active?)
    type Step = (Option<bool>, u64, bool);

    #[test]
    fn active_only_while_the_peer_is_detected_down() {
        let ms = Duration::from_millis;
        // Each case's steps are observed in order on one Standby.
        let cases: &[(&str, &[Step])] = &[
            (
                "a peer that binds at start keeps it passive",
                &[
                    (None, 0, false),
                    (Some(false), 100, false),
                    (Some(true), 200, false),
                    (Some(true), 9000, false),
                ],
            ),
            (
                "a peer that goes down after being up activates it at once, and back steps back",
                &[
                    (Some(true), 100, false),
                    (Some(false), 200, true),
                    (Some(false), 5000, true),
                    (Some(true), 6000, false),
                    (Some(false), 6100, true),
                ],
            ),
            (
                "a peer never reached activates it after the grace",
                &[
                    (Some(false), 0, false),
                    (Some(false), 2999, false),
                    (Some(false), 3000, true),
                    (Some(true), 4000, false),
                ],
            ),
            (
                "no word from any link counts as down after the grace",
                &[(None, 100, false), (None, 3000, true)],
            ),
        ];
        for (name, steps) in cases {
            let mut s = Standby::new(ms(3000));
            for (i, (up, at, want)) in steps.iter().enumerate() {
                assert_eq!(s.observe(*up, ms(*at)), *want, "{name}: step {i}");
            }
        }
    }
}
