//! The SMTP listener: sockets, TLS, timeouts, connection limits and shutdown around the
//! sans-IO [`session::Session`].
//!
//! One task per connection. A connection is refused with `421` when `max_connections` are
//! open. On shutdown, sessions between commands get `421 4.3.2` at once; a session in the
//! middle of a mail is given `shutdown_grace` to finish it.

pub mod auth;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::intake::Intake;
use session::{Output, Reply, Session, SessionConfig};

/// Everything a connection needs, shared by all of them.
struct Shared {
    session: Arc<SessionConfig>,
    config: Arc<Config>,
    intake: Intake,
    tls: Option<TlsAcceptor>,
    idle_timeout: Duration,
    auth: auth::AuthGuard,
}

/// A running listener.
pub struct Listener {
    pub local_addrs: Vec<SocketAddr>,
    tracker: TaskTracker,
}

impl Listener {
    /// Binds every configured address and starts accepting.
    pub async fn start(
        config: Arc<Config>,
        intake: Intake,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Listener> {
        let tls = match &config.smtp.tls {
            Some(files) => Some(tls::acceptor(files).context("loading the SMTP TLS certificate")?),
            None => None,
        };
        let session = Arc::new(SessionConfig {
            hostname: config.site.hostname.clone(),
            max_message_bytes: config.smtp.max_message_bytes,
            max_recipients: config.smtp.max_recipients,
            tls_available: tls.is_some(),
            auth_available: !config.smtp.users.is_empty(),
            accept_untrusted: config.senders.accept_internet_mail,
            address_policy: config.recipients.clone(),
            destinations: config.destinations.clone(),
        });
        let shared = Arc::new(Shared {
            session,
            config: config.clone(),
            intake,
            tls,
            idle_timeout: config.smtp.idle_timeout,
            auth: auth::AuthGuard::new(
                config.smtp.auth_failures_per_client,
                config.smtp.auth_lockout,
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
        });
        let limit = Arc::new(Semaphore::new(config.smtp.max_connections));
        let tracker = TaskTracker::new();
        let mut local_addrs = Vec::new();
        for addr in &config.smtp.listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for SMTP on {addr}"))?;
            let local = listener.local_addr()?;
            info!(%local, "SMTP listener ready");
            local_addrs.push(local);
            tracker.spawn(accept_loop(
                listener,
                shared.clone(),
                limit.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        Ok(Listener {
            local_addrs,
            tracker,
        })
    }

    /// Waits for every connection to end (after the shutdown token fired).
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let reply = Reply::new(421, (4, 3, 2), "Too many connections, try again later");
            let idle = shared.idle_timeout;
            tracker.spawn(async move {
                let refuse = async {
                    let _ = stream.write_all(&reply.to_bytes(false)).await;
                    let _ = stream.shutdown().await;
                };
                let _ = tokio::time::timeout(idle, refuse).await;
            });
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = connection(stream, peer, &shared, &shutdown).await {
                debug!(%peer, error = %e, "SMTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// The byte stream of a connection, before or after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// Reads into `buf`'s spare capacity, none of which needs zeroing first.
    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }
    /// Writes `buf` within `limit`: a client that stops reading (its window full) must not
    /// hold its connection slot for ever, as the idle timeout of reads alone would let it.
    async fn write_all(&mut self, buf: &[u8], limit: Duration) -> std::io::Result<()> {
        let write = async {
            match self {
                Stream::Plain(s) => write_flush(s, buf).await,
                Stream::Tls(s) => write_flush(s.as_mut(), buf).await,
            }
        };
        tokio::time::timeout(limit, write)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client did not read the replies",
                ))
            })
    }
    async fn shutdown(&mut self, limit: Duration) {
        let close = async {
            let _ = match self {
                Stream::Plain(s) => s.shutdown().await,
                Stream::Tls(s) => s.shutdown().await,
            };
        };
        let _ = tokio::time::timeout(limit, close).await;
    }
}

async fn write_flush<S: AsyncWrite + Unpin>(s: &mut S, buf: &[u8]) -> std::io::Result<()> {
    s.write_all(buf).await?;
    s.flush().await
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let trusted = shared.config.smtp.is_trusted(peer.ip());
    let mut session = Session::new(shared.session.clone(), peer.ip(), trusted);
    let mut stream = Stream::Plain(stream);
    debug!(%peer, trusted, "SMTP connection");
    if shutdown.is_cancelled() {
        stream
            .write_all(&session.shutdown_reply(), shared.idle_timeout)
            .await?;
        return Ok(());
    }
    stream
        .write_all(&session.greeting(), shared.idle_timeout)
        .await?;
    // Read into spare capacity (`read_buf`): zeroing a 64 KiB buffer for every connection was
    // 2% of the intake's CPU samples in a profile, at one mail per connection.
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut pending: Vec<Output> = Vec::new();
    loop {
        // Answer everything the last read produced, resolving what needs I/O in order.
        let mut wire = Vec::new();
        while !pending.is_empty() {
            let outputs = std::mem::take(&mut pending);
            for output in outputs {
                match output {
                    Output::Send(bytes) => wire.extend_from_slice(&bytes),
                    Output::Close => {
                        stream.write_all(&wire, shared.idle_timeout).await?;
                        stream.shutdown(shared.idle_timeout).await;
                        return Ok(());
                    }
                    Output::StartTls => {
                        stream.write_all(&wire, shared.idle_timeout).await?;
                        wire.clear();
                        let (Stream::Plain(tcp), Some(acceptor)) = (stream, shared.tls.as_ref())
                        else {
                            anyhow::bail!("STARTTLS on a stream that cannot be upgraded");
                        };
                        let tls = tokio::time::timeout(shared.idle_timeout, acceptor.accept(tcp))
                            .await
                            .context("TLS handshake timed out")?
                            .context("TLS handshake failed")?;
                        stream = Stream::Tls(Box::new(tls));
                        session.tls_started();
                    }
                    Output::CheckAuth { user, password } => {
                        let ip = peer.ip();
                        if let Err(wait) = shared.auth.admit(ip, Instant::now()) {
                            info!(%peer, %user, "SMTP AUTH refused unchecked: too many failures from this client");
                            pending.extend(session.auth_refused(wait));
                            continue;
                        }
                        let ok = check_password(shared, &user, &password).await;
                        if ok {
                            shared.auth.succeeded(ip);
                        } else {
                            info!(%peer, %user, "SMTP AUTH failed");
                            if shared.auth.failed(ip, Instant::now()) {
                                warn!(
                                    %peer,
                                    lockout_secs = shared.config.smtp.auth_lockout.as_secs(),
                                    "SMTP AUTH: this client reached its limit of failures; its AUTH is refused for the lockout"
                                );
                            }
                        }
                        pending.extend(session.auth_result(ok.then_some(user)));
                    }
                    Output::Deliver { envelope, data } => {
                        let reply = shared.intake.accept_smtp(&session, envelope, data).await;
                        pending.extend(session.delivered(reply));
                    }
                }
            }
        }
        if !wire.is_empty() {
            stream.write_all(&wire, shared.idle_timeout).await?;
        }

        let read = tokio::select! {
            // A session mid-mail keeps going; the shutdown waits `shutdown_grace` for it.
            _ = shutdown.cancelled(), if session.is_idle() => {
                stream.write_all(&session.shutdown_reply(), shared.idle_timeout).await?;
                stream.shutdown(shared.idle_timeout).await;
                return Ok(());
            }
            r = tokio::time::timeout(shared.idle_timeout, {
                buf.clear();
                stream.read_buf(&mut buf)
            }) => r,
        };
        let n = match read {
            Err(_) => {
                let r = Reply::new(421, (4, 4, 2), "Idle timeout, closing connection");
                stream
                    .write_all(&r.to_bytes(true), shared.idle_timeout)
                    .await?;
                stream.shutdown(shared.idle_timeout).await;
                return Ok(());
            }
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        pending = session.feed(&buf[..n]);
    }
}

/// Verifies a password against the configured Argon2 hash, off the async threads (Argon2 is
/// deliberately slow) and in turn with other checks ([`auth::AuthGuard::check`]). An unknown
/// user costs the same as a wrong password.
async fn check_password(shared: &Shared, user: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    // A fixed hash to verify against when the user does not exist, so timing does not tell.
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0v1bq0uNgh5tw1WrL0H2lPfM5fdOZpHCbBqmP3HNXDA";
    let hash = shared
        .config
        .smtp
        .users
        .iter()
        .find(|u| u.name == user)
        .map(|u| u.password_hash.clone());
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| DUMMY.to_string());
    let password = password.to_string();
    shared
        .auth
        .check(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
                && known
        })
        .await
}
