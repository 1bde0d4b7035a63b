//! Links between sites over SMPP 3.4, and the failover that rides on them.
//!
//! Every site runs an SMPP server ([`server`]) where its peers and applications bind as
//! transceivers, and binds to each configured peer ([`link`]). A message the router gives to a
//! peer is forwarded there as one `submit_sm` and becomes the peer's once the peer has committed
//! it (`submit_sm_resp`); the peer's `deliver_sm` receipts come back on the same bind. The
//! keepalive (`enquire_link`) and the connection itself tell whether a peer is up; the router
//! excludes a peer that is down, and the messages placed on it that it had not acknowledged are
//! placed again ([`placement`]), so they go out through this site's own (dearer) channels.
//!
//! - [`session`]: keepalive, window, the server's session state machine (sans-IO).
//! - [`message`]: what the PDUs carry: forwarded messages, receipts, workload (sans-IO).
//! - [`passive`]: when a passive configuration (a peer's mailbox picked up here) is active.
//! - [`placement`]: which site sends each message; the hook the modem pool consults.
//! - [`forward`]: the lists of messages for each link, and this site's workload.
//! - [`handover`]: how a forwarded message passes to the peer without ever being sent by both.
//! - [`provider`]: external SMPP providers, channels of this site bound with the same client.
//! - [`receipt`]: delivery receipts from providers, in their real-world shapes (sans-IO).
//! - [`client`]: what the links and the providers share as SMPP clients: connect, bind, send.
//! - [`tls`]: TLS under the SMPP links, both ends.
//! - [`config`]: `[smpp]`, `[peer.smpp]` and `[channel.smpp]`.
//!
//! **Architecture invariant: a message is sent by one site.** Before its `submit_sm_resp` a
//! forwarded message is still this site's, placed on the link and on no other sender; after
//! it, it is the peer's (`sent` through `peer:<name>` on disk, and `Taken` in memory from the
//! moment the response is read). The peer stores it once however often it arrives, and holds
//! it unsent until this site confirms it is the peer's; a message this site took back is never
//! confirmed ([`handover`], whose table lists every crash and partition order).

pub mod client;
pub mod config;
pub mod forward;
pub mod handover;
pub mod link;
pub mod message;
pub mod passive;
pub mod placement;
pub mod provider;
pub mod receipt;
pub mod server;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::queue::Store;
use crate::route::Router;

/// The running peer stage.
#[derive(Debug)]
pub struct Peers {
    /// Where the SMPP server listens.
    pub listening: Vec<SocketAddr>,
    pub placement: Option<Arc<placement::Placement>>,
    /// The binds to providers: when the gateway stops, each waits a moment for the answers
    /// to what it submitted, so that they are recorded.
    pub providers: TaskTracker,
}

/// Starts the SMPP server (with `[smpp]`) and a link per `[peer.smpp]`, and installs the
/// placement hook when there are links. Without `[smpp]`, nothing runs and every message is
/// sent here, as on a single-site gateway.
pub async fn start(
    cfg: &Config,
    store: &Store,
    router: Arc<Router>,
    queued: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<Peers> {
    let Some(smpp) = cfg.smpp.clone() else {
        // No SMPP server and no peer links; providers may still be bound.
        let (placement, providers) = start_providers(cfg, store, &router, Vec::new(), shutdown)?;
        return Ok(Peers {
            listening: Vec::new(),
            placement,
            providers,
        });
    };
    let accounts = server::Accounts {
        peers: cfg
            .peer_links
            .iter()
            .map(|l| (l.name.clone(), l.password_hash.clone()))
            .collect(),
        users: smpp
            .users
            .iter()
            .map(|u| (u.system_id.clone(), u.password_hash.clone()))
            .collect(),
    };
    let shared = Arc::new(server::Shared {
        site: cfg.site.name.clone(),
        store: store.clone(),
        accounts,
        max_parts: cfg.sms.max_parts,
        router_state: router.state().clone(),
        queued,
        receipts: server::Receipts::default(),
        tls: match &smpp.tls {
            Some(files) => Some(crate::intake::smtp::tls::acceptor(files)?),
            None => None,
        },
    });
    let names: Vec<String> = cfg.peer_links.iter().map(|l| l.name.clone()).collect();
    // Before the server listens: a peer's confirmations may come with its first bind.
    let inbound = Arc::new(handover::Inbound::load(store).await?);
    if !names.is_empty() {
        inbound.install();
        let binds = Arc::new(shared.receipts.clone());
        tokio::spawn(handover::ask_loop(store.clone(), binds, shutdown.clone()));
    }
    let listening = server::listen(shared, &smpp.listen, shutdown.clone()).await?;

    let placement = Arc::new(
        placement::Placement::new(router.clone(), names.clone(), inbound)
            .with_providers(cfg.provider_links.iter().map(|l| l.name.clone()).collect()),
    );
    placement.load_taken_back(handover::load_taken_back(store).await?);
    let providers = provider::start(
        cfg,
        store,
        placement.clone(),
        router.state(),
        shutdown.clone(),
    );
    let forwarder = Arc::new(forward::Forwarder::new(&names));
    // The feeder also measures this site's workload, which the links send even to peers
    // nothing is forwarded to.
    tokio::spawn(forward::feed(
        store.clone(),
        placement.clone(),
        forwarder.clone(),
        router.state().clone(),
        cfg.site.name.clone(),
        shutdown.clone(),
    ));
    let placed = !names.is_empty() || !cfg.provider_links.is_empty();
    if placed && !crate::queue::dispatch::set_placement(placement.clone()) {
        anyhow::bail!("the placement of messages between sites was installed twice in one process");
    }
    for l in &cfg.peer_links {
        let link = Arc::new(link::Link {
            site: cfg.site.name.clone(),
            peer: l.clone(),
            timing: smpp.clone(),
            store: store.clone(),
            placement: placement.clone(),
            forwarder: forwarder.clone(),
            state: router.state().clone(),
        });
        tokio::spawn(link::run(link, shutdown.clone()));
    }
    Ok(Peers {
        listening,
        placement: placed.then_some(placement),
        providers,
    })
}

/// A site without `[smpp]`: only its providers, if it has any.
fn start_providers(
    cfg: &Config,
    store: &Store,
    router: &Arc<Router>,
    peers: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<(Option<Arc<placement::Placement>>, TaskTracker)> {
    let names: Vec<String> = cfg.provider_links.iter().map(|l| l.name.clone()).collect();
    let placement = Arc::new(
        placement::Placement::new(router.clone(), peers, Arc::new(handover::Inbound::open()))
            .with_providers(names.clone()),
    );
    let binds = provider::start(cfg, store, placement.clone(), router.state(), shutdown);
    if names.is_empty() {
        return Ok((None, binds));
    }
    if !crate::queue::dispatch::set_placement(placement.clone()) {
        anyhow::bail!("the placement of messages was installed twice in one process");
    }
    Ok((Some(placement), binds))
}
