//! The I/O both SMPP clients of a site share, the links to peer sites ([`super::link`]) and the
//! binds to providers ([`super::provider`]): connecting (with TLS when configured), binding as
//! a transceiver and waiting for the answer, and writing PDUs.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rusmpp::pdus::BindTransceiver;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::COctetString;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::config::ClientTls;
use super::session::Sequence;
use super::tls::{ConnectError, Stream};

/// A client's bound connection.
pub type Client = Framed<Stream, CommandCodec>;

/// Why connecting or binding failed; each client turns it into its own error.
#[derive(Debug)]
pub enum BindFailure {
    Connect(ConnectError),
    Refused(CommandStatus),
    Closed,
    /// No answer within the patience, which is so many keepalive intervals.
    Silent(u32),
    Io(String),
    Shutdown,
}

/// Connects to `address` and sends `bind`; returns the connection and the sequence that
/// numbered the bind once the other side accepted it within `patience` (`missed` keepalive
/// intervals, for the error).
pub async fn bind(
    address: &str,
    tls: Option<&ClientTls>,
    bind: BindTransceiver,
    patience: Duration,
    missed: u32,
    shutdown: &CancellationToken,
) -> Result<(Client, Sequence), BindFailure> {
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return Err(BindFailure::Shutdown),
        r = super::tls::connect(address, tls, Duration::from_secs(5)) => r.map_err(BindFailure::Connect)?,
    };
    let mut framed = Framed::new(
        stream,
        CommandCodec::new().with_max_length(super::server::MAX_PDU),
    );
    let mut seq = Sequence::default();
    let s = seq.advance();
    send(
        &mut framed,
        Command::new(CommandStatus::EsmeRok, s, Pdu::BindTransceiver(bind)),
    )
    .await
    .map_err(BindFailure::Io)?;
    let resp = tokio::select! {
        _ = shutdown.cancelled() => return Err(BindFailure::Shutdown),
        r = tokio::time::timeout(patience, framed.next()) => match r {
            Err(_) => return Err(BindFailure::Silent(missed)),
            Ok(None) => return Err(BindFailure::Closed),
            Ok(Some(Err(e))) => return Err(BindFailure::Io(e.to_string())),
            Ok(Some(Ok(c))) => c,
        },
    };
    if resp.id() != CommandId::BindTransceiverResp || resp.status() != CommandStatus::EsmeRok {
        return Err(BindFailure::Refused(resp.status()));
    }
    Ok((framed, seq))
}

/// Writes one PDU; the error is the connection's, as text.
pub async fn send(framed: &mut Client, cmd: Command) -> Result<(), String> {
    framed.send(cmd).await.map_err(|e| e.to_string())
}

/// A C-Octet String field, empty when `s` does not fit.
pub fn cstr<const MIN: usize, const MAX: usize>(s: &str) -> COctetString<MIN, MAX> {
    COctetString::from_string(s.to_string()).unwrap_or_else(|_| COctetString::empty())
}
