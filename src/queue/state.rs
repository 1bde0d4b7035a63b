//! The states a part (and, summarised, a recipient) goes through.
//!
//! ```text
//! accepted → routed → sending → sent → delivered
//!                        │        └──→ failed
//!                        ├──→ failed          (permanent error, or attempts exhausted)
//!                        └──→ uncertain       (crash between marking `sending` and the answer)
//! ```
//! `uncertain` is final: such a part may or may not have left, and sending it again could send
//! it twice, so it is reported instead (invariant 3).
//!
//! `held` is outside the flow: the SMS-pumping guard put the message aside for an admin, who
//! releases it (back to `accepted`) or drops it (`failed`) with `mail2sms held`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Accepted,
    Routed,
    Sending,
    Sent,
    Delivered,
    Failed,
    Uncertain,
    Held,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Accepted,
        State::Routed,
        State::Sending,
        State::Sent,
        State::Delivered,
        State::Failed,
        State::Uncertain,
        State::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Accepted => "accepted",
            State::Routed => "routed",
            State::Sending => "sending",
            State::Sent => "sent",
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Uncertain => "uncertain",
            State::Held => "held",
        }
    }

    /// No further change is expected.
    pub fn is_final(self) -> bool {
        matches!(self, State::Delivered | State::Failed | State::Uncertain)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a state; states are accepted, routed, sending, sent, delivered, failed, uncertain"
)]
pub struct UnknownState(String);

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
            assert_eq!(s.to_string().to_uppercase().parse::<State>(), Ok(s));
        }
        assert!("queued".parse::<State>().is_err());
    }
}
