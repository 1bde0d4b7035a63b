//! The workload term, and how a site's workload travels to its peers.
//!
//! A site's **backlog** is how long its queue would take to drain at its current pace:
//! queue length (parts waiting for that site's channels) ÷ throughput (parts sent per second,
//! measured by the site over the last minute or so). The router adds
//! `workload_weight × min(backlog, max_backlog)` to every candidate at that site, so a cheap but
//! swamped site loses to a slightly dearer idle one once the wait is worth more than the price
//! difference. A site with a queue and no throughput (stalled) counts `max_backlog`; an empty
//! queue counts zero whatever the throughput.
//!
//! **Exchange.** Each site measures its own queue length and throughput and calls
//! [`RouterState::set_workload`](super::RouterState::set_workload) with its own name; it also
//! sends the same two figures to every peer over the peer link, and each peer feeds what it
//! receives into its own router state under the sender's name. SMPP 3.4's keepalive,
//! `enquire_link`, has a header and no body (SMPP 3.4 §4.11.1), so it cannot carry them; instead
//! each site sends a `data_sm` (§4.7) on the peer link at the keepalive interval, carrying a
//! [`WorkloadReport`] as two optional parameters with tags in the range SMPP 3.4 reserves for
//! vendor-specific parameters, 0x1400–0x3FFF (§5.3.2): [`TAG_QUEUE_LEN`] and [`TAG_THROUGHPUT`].
//! They are only ever sent between the organization's own sites, never to an external provider.
//! A report is a snapshot, not a delta, so a lost one costs nothing; a peer whose reports stop is
//! one whose keepalive stops too, and failure detection marks it down, which excludes it
//! whatever its last workload was.
//!
//! This file holds the arithmetic and the encoding of those two parameters, sans-IO; the peer
//! module sends and receives the `data_sm`.

use super::tariff::Cost;

/// Optional parameter tag (SMPP 3.4 §5.3.2, vendor-specific range): parts waiting at the
/// sending site, 4 octets, unsigned, big-endian (SMPP's integer encoding, §3.1).
pub const TAG_QUEUE_LEN: u16 = 0x1F01;
/// Optional parameter tag: the sending site's throughput in thousandths of a part per second,
/// 4 octets, unsigned, big-endian.
pub const TAG_THROUGHPUT: u16 = 0x1F02;

/// The two figures a site sends its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadReport {
    /// Parts waiting for the site's channels.
    pub queue_len: u32,
    /// Parts sent per second × 1000.
    pub throughput_milli: u32,
}

impl WorkloadReport {
    /// From a site's own measurements; values beyond 32 bits saturate.
    pub fn new(queue_len: u64, throughput_per_s: f64) -> Self {
        let milli = if throughput_per_s.is_finite() && throughput_per_s > 0.0 {
            // `as` saturates at the bounds, which is what an out-of-range rate should do.
            (throughput_per_s * 1000.0).round() as u32
        } else {
            0
        };
        WorkloadReport {
            queue_len: u32::try_from(queue_len).unwrap_or(u32::MAX),
            throughput_milli: milli,
        }
    }

    pub fn throughput_per_s(&self) -> f64 {
        f64::from(self.throughput_milli) / 1000.0
    }

    /// Appends the two optional parameters, each as tag, length, value (two octets, two octets, then
    /// the value), the layout of every SMPP 3.4 optional parameter.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for (tag, value) in [
            (TAG_QUEUE_LEN, self.queue_len),
            (TAG_THROUGHPUT, self.throughput_milli),
        ] {
            out.extend_from_slice(&tag.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
        }
    }

    /// Reads the optional parameters section of a PDU. Parameters with other tags are skipped,
    /// as SMPP 3.4 asks of a receiver that meets optional parameters it does not support. `Ok(None)` when the
    /// section carries no workload report (both tags are needed).
    pub fn decode(mut tlvs: &[u8]) -> Result<Option<WorkloadReport>, TlvError> {
        let (mut queue, mut rate) = (None, None);
        while !tlvs.is_empty() {
            let [t0, t1, l0, l1, rest @ ..] = tlvs else {
                return Err(TlvError::Truncated);
            };
            let tag = u16::from_be_bytes([*t0, *t1]);
            let len = usize::from(u16::from_be_bytes([*l0, *l1]));
            let Some(value) = rest.get(..len) else {
                return Err(TlvError::Truncated);
            };
            if tag == TAG_QUEUE_LEN || tag == TAG_THROUGHPUT {
                let v: [u8; 4] = value
                    .try_into()
                    .map_err(|_| TlvError::BadLength { tag, len })?;
                let v = u32::from_be_bytes(v);
                if tag == TAG_QUEUE_LEN {
                    queue = Some(v);
                } else {
                    rate = Some(v);
                }
            }
            tlvs = &rest[len..];
        }
        Ok(match (queue, rate) {
            (Some(queue_len), Some(throughput_milli)) => Some(WorkloadReport {
                queue_len,
                throughput_milli,
            }),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    #[error("the optional parameters end in the middle of a parameter")]
    Truncated,
    #[error("optional parameter 0x{tag:04X} has {len} octets of value; a workload figure has 4")]
    BadLength { tag: u16, len: usize },
}

/// Backlog in milliseconds: how long `queue_len` parts take at `throughput_per_s`. A queue with
/// no (or no valid) throughput is `u64::MAX`, which the term caps.
pub fn backlog_ms(queue_len: u64, throughput_per_s: f64) -> u64 {
    if queue_len == 0 {
        return 0;
    }
    if !(throughput_per_s.is_finite() && throughput_per_s > 0.0) {
        return u64::MAX;
    }
    // `as` saturates, so an absurdly small rate gives u64::MAX rather than wrapping.
    (queue_len as f64 * 1000.0 / throughput_per_s).round() as u64
}

/// The workload term: `weight` (cost per second of backlog) × backlog, the backlog capped at
/// `max_backlog_ms`. Rounded down to the cost unit.
#[inline]
pub fn term(weight: Cost, backlog_ms: u64, max_backlog_ms: u64) -> Cost {
    let b = backlog_ms.min(max_backlog_ms);
    // This runs for every candidate of every decision: 64-bit arithmetic (a division by a
    // constant is a multiply), 128 bits only when the product would not fit.
    match weight.0.checked_mul(b) {
        Some(p) => Cost(p / 1000),
        None => {
            Cost((u128::from(weight.0) * u128::from(b) / 1000).min(u128::from(u64::MAX)) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_and_term() {
        // (queue, parts/s, backlog ms)
        let cases: &[(u64, f64, u64)] = &[
            (0, 0.0, 0),
            (0, 5.0, 0),
            (10, 2.0, 5_000),
            (1, 3.0, 333),
            (5, 0.0, u64::MAX),
            (5, -1.0, u64::MAX),
            (5, f64::NAN, u64::MAX),
            (5, f64::INFINITY, u64::MAX),
            (u64::MAX, 1e-300, u64::MAX),
        ];
        for &(q, tp, want) in cases {
            assert_eq!(backlog_ms(q, tp), want, "{q} at {tp}/s");
        }
        // 0.0001 per second × 5 s = 0.0005
        assert_eq!(term(Cost(100), 5_000, 3_600_000), Cost(500));
        // capped at an hour: 0.0001 × 3600 = 0.36
        assert_eq!(term(Cost(100), u64::MAX, 3_600_000), Cost(360_000));
        assert_eq!(term(Cost(0), u64::MAX, 3_600_000), Cost(0));
        // rounded down: 0.000001 × 0.333 s
        assert_eq!(term(Cost(1), 333, 3_600_000), Cost(0));
        assert_eq!(term(Cost(u64::MAX), u64::MAX, u64::MAX), Cost(u64::MAX));
    }

    #[test]
    fn reports_round_trip_and_skip_other_parameters() {
        let r = WorkloadReport::new(1234, 2.5);
        assert_eq!(
            r,
            WorkloadReport {
                queue_len: 1234,
                throughput_milli: 2500
            }
        );
        let mut bytes = Vec::new();
        // Another parameter first (receipted_message_id, tag 0x001E in SMPP 3.4).
        bytes.extend_from_slice(&[0x00, 0x1E, 0x00, 0x03, b'a', b'b', 0]);
        r.encode(&mut bytes);
        assert_eq!(
            &bytes[7..],
            &[
                0x1F, 0x01, 0, 4, 0, 0, 0x04, 0xD2, 0x1F, 0x02, 0, 4, 0, 0, 0x09, 0xC4
            ]
        );
        assert_eq!(WorkloadReport::decode(&bytes), Ok(Some(r)));
        assert_eq!(WorkloadReport::decode(&bytes[..7]), Ok(None));
        assert_eq!(WorkloadReport::decode(&[]), Ok(None));
        assert_eq!(
            WorkloadReport::decode(&bytes[..bytes.len() - 1]),
            Err(TlvError::Truncated)
        );
        assert_eq!(
            WorkloadReport::decode(&bytes[..9]),
            Err(TlvError::Truncated)
        );
        assert_eq!(
            WorkloadReport::decode(&[0x1F, 0x01, 0, 2, 0, 1]),
            Err(TlvError::BadLength {
                tag: TAG_QUEUE_LEN,
                len: 2
            })
        );
        assert_eq!(
            WorkloadReport::new(u64::MAX, f64::NAN),
            WorkloadReport {
                queue_len: u32::MAX,
                throughput_milli: 0
            }
        );
        assert_eq!(WorkloadReport::new(1, 1e12).throughput_milli, u32::MAX);
    }
}
