//! The `mail2sms` command: runs the gateway and lets an admin look inside it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use mail2sms::{admin, config, intake, notify, queue, route};

// The gateway makes many small, short-lived allocations, freed on another thread than the
// one that made them (tokio's workers, the store's thread): glibc's malloc spent an eighth of
// the CPU of the intake benchmark (`bench/intake`) on them, mimalloc far less. C code's malloc
// (SQLite's) is mimalloc's as well: its `override` feature, in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "mail2sms", version, about = "Email-to-SMS gateway")]
struct Cli {
    /// Configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "MAIL2SMS_CONFIG",
        default_value = "/etc/mail2sms/mail2sms.toml"
    )]
    config: PathBuf,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum HeldAction {
    /// Send them after all.
    Release {
        /// Request id (or a unique prefix), or `all`.
        id: String,
    },
    /// Fail them for good, as suspected SMS pumping.
    Drop {
        /// Request id (or a unique prefix), or `all`.
        id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM.
    Run,
    /// Check a configuration file and say what is wrong with it (file, line, key).
    CheckConfig {
        /// The file to check (default: --config).
        file: Option<PathBuf>,
    },
    /// Show one request: each recipient's state, parts and history.
    Status {
        /// Request id, or a unique prefix of it.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List queued recipients, oldest first.
    Queue {
        /// Only recipients in this state (accepted, routed, sending, sent, delivered, failed, uncertain).
        #[arg(long)]
        state: Option<queue::State>,
        #[arg(long)]
        json: bool,
    },
    /// Requests the SMS-pumping guard held: list them, or release or drop them.
    Held {
        #[command(subcommand)]
        action: Option<HeldAction>,
        #[arg(long)]
        json: bool,
    },
    /// Each modem's identity, signal, registration, state and counters.
    Modems {
        #[arg(long)]
        json: bool,
    },
    /// Read a password on standard input and print its Argon2id hash for `[[smtp.users]]`.
    HashPassword,
    /// Run simulated GSM modems on pseudo-terminals (for tests and trying things out).
    ModemSim(mail2sms::modem::sim::SimArgs),
    /// Least-cost routing between sites and channels.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Rank every site and channel for a number, with each cost term, and say why the others
    /// are excluded.
    Explain {
        /// The destination: +33477858589, or as a sender would write it (national numbers are
        /// read in [site] default_country).
        number: String,
        /// Length of the message in SMS parts.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
        parts: u32,
        #[arg(long)]
        json: bool,
    },
}

/// Threads for the async runtime: one less than the machine's cores, because the store's writes
/// run on a thread of their own (SQLite's, one per connection), which is busy whenever the
/// gateway is. With one runtime thread per core as well, the runtime's threads and the store's
/// take turns on the same cores and wake each other across them: on two cores that cost a fifth
/// of the CPU per SMS in `bench/modems` (16 wake-ups per SMS against 10). `TOKIO_WORKER_THREADS`
/// overrides it.
fn worker_threads() -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1).max(1))
        .unwrap_or(1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            report(&error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-separated, each cause left out when the message before it
/// already says it (most of the store's errors quote their source): `{:#}` would print the
/// driver's sentence two or three times over.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !last.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        last = text;
    }
    out
}

/// Writes why the gateway stops to stderr; `eprintln!` would panic (and change the exit code)
/// when stderr cannot be written.
fn report(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "mail2sms: {why}");
}

/// Colours only for a person at a terminal: a log written to a file, a pipe or the journal is
/// read by tools (grep, log shippers) that would see the escape codes as text. `NO_COLOR`
/// (no-color.org) turns them off at a terminal too.
fn log_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colours = log_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    // A log that cannot be written (its disk full) must not stop the gateway: by default the
    // subscriber reports a failed write with `eprintln!`, which panics when stderr fails too.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => run(&cli.config).await.map(|_| ExitCode::SUCCESS),
        Command::CheckConfig { file } => {
            let file = file.unwrap_or(cli.config);
            match config::load(&file) {
                Ok(c) => {
                    println!("{}: OK", file.display());
                    print!("{}", admin::describe_config(&c));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Status { id, json } => {
            let pool = open_store_for_reading(&cli.config).await?;
            let st = queue::status(&pool, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", admin::render_status(&st));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { state, json } => {
            let pool = open_store_for_reading(&cli.config).await?;
            let entries = queue::list(&pool, state).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", admin::render_queue(&entries));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Held { action, json } => {
            let cfg = config::load(&cli.config)?;
            let who = std::env::var("USER").unwrap_or_else(|_| "an admin".into());
            match action {
                None => {
                    let pool = queue::Store::open_read_only(&cfg.store.path).await?;
                    let held = queue::policy::held(&pool).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&held)?);
                    } else {
                        print!("{}", admin::render_held(&held));
                    }
                }
                Some(action) => {
                    let (id, release) = match action {
                        HeldAction::Release { id } => (id, true),
                        HeldAction::Drop { id } => (id, false),
                    };
                    let pool = queue::Store::open_for_admin(&cfg.store.path).await?;
                    let n = queue::policy::decide_held(&pool, &id, release, &who).await?;
                    println!(
                        "{} {n} recipient(s)",
                        if release { "released" } else { "dropped" }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Modems { json } => {
            let pool = open_store_for_reading(&cli.config).await?;
            let rows = queue::modems(&pool).await?;
            if json {
                let v: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(_, s, at)| {
                        let mut v: serde_json::Value =
                            serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
                        if let Some(o) = v.as_object_mut() {
                            o.insert("updated_at".into(), at.clone().into());
                        }
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", admin::render_modems(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ModemSim(args) => mail2sms::modem::sim::run_cli(args)
            .await
            .map(|_| ExitCode::SUCCESS),
        Command::Route {
            command:
                RouteCommand::Explain {
                    number,
                    parts,
                    json,
                },
        } => {
            let cfg = config::load(&cli.config)?;
            let number = match mail2sms::parse::address::normalize_number(&number, &cfg.recipients)
            {
                Ok((e164, _, _)) => e164,
                // A number the gateway refuses at RCPT still has a route worth showing when it
                // is written in full; say that it is refused.
                Err(e)
                    if number.trim().starts_with('+')
                        && route::number_digits(number.trim()).is_ok() =>
                {
                    eprintln!("note: {e}");
                    number.trim().to_string()
                }
                Err(e) => anyhow::bail!("`{number}` is not a number the gateway sends to: {e}"),
            };
            let router = route::Router::from_config(&cfg)?;
            let explanation = router
                .plan()
                .explain(&number, parts, route::Scope::Organization)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                print!("{}", explanation.render());
                println!(
                    "(sites as configured: this command does not see the running gateway's health and workload reports)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "no password on standard input");
            println!("{}", admin::hash_password(password)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn open_store_for_reading(config_path: &std::path::Path) -> anyhow::Result<sqlx::SqlitePool> {
    let cfg = config::load(config_path)?;
    Ok(queue::Store::open_read_only(&cfg.store.path).await?)
}

async fn run(config_path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Arc::new(config::load(config_path)?);
    let store = queue::Store::open_with(&cfg.store.path, cfg.queue_policy.clone())
        .await
        .with_context(|| format!("opening the queue at {}", cfg.store.path.display()))?;
    let shutdown = CancellationToken::new();
    let uncertain = queue::dispatch::recover(&store).await?;
    if uncertain > 0 {
        warn!(
            parts = uncertain,
            "parts were being sent when the gateway stopped; they are now `uncertain` and will not be sent again"
        );
    }
    let router = Arc::new(route::Router::from_config(&cfg)?);
    {
        let plan = router.plan();
        info!(
            sites = plan.sites.len(),
            channels = plan.channels.len(),
            prefixes = plan.prefixes(),
            "routing tables loaded; SIGHUP reloads them"
        );
    }
    // Registered before anything can send it: SIGHUP's default action ends the process.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(reload_routing_on_sighup(
        hup,
        config_path.to_path_buf(),
        router.clone(),
        shutdown.clone(),
    ));
    let queued = Arc::new(tokio::sync::Notify::new());
    // Before the modems: the pool must see which messages go to peers from its first read.
    let peers = mail2sms::peer::start(
        &cfg,
        &store,
        router.clone(),
        queued.clone(),
        shutdown.clone(),
    )
    .await
    .context("starting the SMPP server and peer links")?;
    for addr in &peers.listening {
        info!(%addr, "SMPP server listening");
    }
    let modems =
        mail2sms::modem::start_modems(&cfg, &store, queued.clone(), shutdown.clone()).await?;
    let senders = mail2sms::policy::SenderPolicy::new(
        cfg.senders.allowed_addresses.clone(),
        cfg.senders.allowed_domains.clone(),
        cfg.senders.accept_internet_mail,
        cfg.senders.pins.clone(),
        cfg.senders.dns_server,
        cfg.site.hostname.clone(),
    )
    .context("setting up the sender checks")?;
    let intake = intake::Intake::new(cfg.clone(), store.clone(), senders, queued);
    // Replies to senders: written to the queue by intake, sent from there by `notify::run`.
    let notices = match &cfg.notify {
        Some(n) => {
            let notifier = notify::Notifier::new(n.clone())?;
            if let Some(r) = &cfg.replies {
                tokio::spawn(notify::replies::run(
                    store.clone(),
                    notifier.clone(),
                    r.clone(),
                    shutdown.clone(),
                ));
            }
            let wake = Arc::new(tokio::sync::Notify::new());
            tokio::spawn(notify::run(
                store.clone(),
                notifier,
                wake.clone(),
                shutdown.clone(),
            ));
            Some(wake)
        }
        None => {
            if !cfg.mailboxes.is_empty() {
                warn!(
                    "no [notify] relay is configured: senders of mail that gives no SMS are not told"
                );
            }
            None
        }
    };
    let mailboxes = intake::imap::start(
        intake.clone(),
        notices,
        router.state().clone(),
        shutdown.clone(),
    );
    let listener = intake::smtp::Listener::start(cfg.clone(), intake, shutdown.clone()).await?;
    info!(site = %cfg.site.name, store = %cfg.store.path.display(), modems = modems.count(), mailboxes = cfg.mailboxes.len(), "mail2sms running");

    wait_for_signal().await?;
    info!("shutting down");
    shutdown.cancel();
    if tokio::time::timeout(cfg.smtp.shutdown_grace, async {
        listener.wait().await;
        mailboxes.wait().await;
    })
    .await
    .is_err()
    {
        info!("sessions still open after the grace period; closing them");
    }
    // A part in a modem's hands gets its answer recorded, rather than becoming `uncertain`.
    let longest_send = cfg
        .modems
        .iter()
        .map(|m| m.driver.command_timeout + m.driver.send_timeout)
        .max()
        .unwrap_or_default();
    // Likewise a part submitted to an SMPP provider: its bind waits a moment for the answer.
    let (modems_done, providers_done) = tokio::join!(
        tokio::time::timeout(
            longest_send + std::time::Duration::from_secs(5),
            modems.wait(),
        ),
        tokio::time::timeout(std::time::Duration::from_secs(10), peers.providers.wait()),
    );
    if modems_done.is_err() {
        warn!("a modem did not finish its send in time; its part will be `uncertain`");
    }
    if providers_done.is_err() {
        warn!("an SMPP provider's bind did not stop in time");
    }
    Ok(())
}

/// On SIGHUP, reads the configuration file again and swaps in its routing part (tariffs, peers,
/// channels, rules); other sections take a restart. A file with an error changes nothing: the
/// error, with its file and line, goes to the log and the current tables stay.
async fn reload_routing_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    path: PathBuf,
    router: Arc<route::Router>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        // Reading tariff files is blocking file work: keep it off the runtime's threads.
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&p)).await;
        let cfg = match loaded {
            Ok(Ok(cfg)) => cfg,
            Ok(Err(e)) => {
                error!(error = %e, "SIGHUP: configuration not reloaded, the routing tables in use stay");
                continue;
            }
            Err(e) => {
                error!(error = %e, "SIGHUP: reading the configuration failed, the routing tables in use stay");
                continue;
            }
        };
        match router.reload(&cfg) {
            Ok(report) if report.changes.is_empty() => {
                info!("SIGHUP: routing reloaded, nothing changed")
            }
            Ok(report) => {
                for change in &report.changes {
                    info!(%change, "SIGHUP: routing reloaded");
                }
            }
            Err(e) => {
                error!(error = %e, "SIGHUP: routing not reloaded, the tables in use stay")
            }
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{error_chain, log_colours};
    use std::ffi::OsStr;

    #[derive(Debug, thiserror::Error)]
    #[error("the store failed: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn a_cause_already_quoted_is_not_said_twice() {
        let full = || std::io::Error::other("disk is full");
        let quoted = anyhow::Error::new(Quoting(full())).context("opening the queue");
        assert_eq!(
            error_chain(&quoted),
            "opening the queue: the store failed: disk is full"
        );
        let plain = anyhow::Error::new(full()).context("opening the queue");
        assert_eq!(error_chain(&plain), "opening the queue: disk is full");
    }

    #[test]
    fn colours_only_at_a_terminal_without_no_color() {
        // (stderr is a terminal, NO_COLOR, colours)
        let table: [(bool, Option<&OsStr>, bool); 6] = [
            (true, None, true),
            (true, Some(OsStr::new("")), true),
            (true, Some(OsStr::new("1")), false),
            (true, Some(OsStr::new("yes")), false),
            (false, None, false),
            (false, Some(OsStr::new("1")), false),
        ];
        for (terminal, no_color, want) in table {
            assert_eq!(
                log_colours(terminal, no_color),
                want,
                "{terminal} {no_color:?}"
            );
        }
    }
}
