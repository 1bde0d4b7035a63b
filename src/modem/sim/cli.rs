//! `modem-sim`: runs N simulated modems on pseudo-terminals, with an optional control socket,
//! until SIGINT or SIGTERM. The demo configuration and tests written in other languages use
//! it to get serial modems without hardware.

use std::path::PathBuf;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use super::pty::{SimHandle, spawn};
use super::{ReportConfig, ReportMode, SimConfig, control};

/// Options of `modem-sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Number of modems, named modem0 .. modemN-1, each with its own IMEI and IMSI.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Directory where each modem's serial port appears as a symlink named after it.
    #[arg(long)]
    pub dir: PathBuf,
    /// File to which every accepted SMS is appended as one JSON line.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Unix socket accepting JSON fault-injection commands, one per line.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Delay before each answer, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub latency_ms: u64,
    /// Delay before the answer to AT+CMGS, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub cmgs_latency_ms: u64,
    /// SIM PIN the modems ask for (none by default).
    #[arg(long)]
    pub pin: Option<String>,
    /// How status reports reach the terminal: as AT+CNMI asks (auto), always +CDS, always
    /// stored with +CDSI, or never.
    #[arg(long, value_enum, default_value_t = ReportMode::Auto)]
    pub report: ReportMode,
    /// TP-Status of the status reports (0 delivered, 65 = 0x41 incompatible destination).
    #[arg(long, default_value_t = 0)]
    pub report_status: u8,
    /// Delay between the +CMGS answer and its status report, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub report_delay_ms: u64,
    /// Probability that a send fails with --error-code.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// +CMS ERROR cause of injected failures.
    #[arg(long, default_value_t = 38)]
    pub error_code: u16,
    /// Seed of the failure generator (0: derived from each IMEI).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SimArgs {
    /// The configuration of each modem.
    pub fn configs(&self) -> Vec<SimConfig> {
        (0..self.count)
            .map(|n| {
                let mut cfg = SimConfig::numbered(n);
                cfg.pin = self.pin.clone();
                cfg.latency_ms = self.latency_ms;
                cfg.cmgs_latency_ms = self.cmgs_latency_ms;
                cfg.report = ReportConfig {
                    mode: self.report,
                    status: self.report_status,
                    delay_ms: self.report_delay_ms,
                    duplicate: false,
                };
                cfg.seed = if self.seed == 0 {
                    0
                } else {
                    self.seed.wrapping_add(u64::from(n))
                };
                cfg
            })
            .collect()
    }
}

/// Runs the simulated modems until SIGINT or SIGTERM, then removes their symlinks and the
/// control socket.
pub async fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.count > 0, "--count must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.error_rate),
        "--error-rate must be between 0 and 1, not {}",
        args.error_rate
    );
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut modems: Vec<SimHandle> = Vec::new();
    for cfg in args.configs() {
        let link = args.dir.join(&cfg.name);
        let name = cfg.name.clone();
        let handle = spawn(cfg, link.clone(), args.record.clone())
            .await
            .with_context(|| format!("cannot start {name} at {}", link.display()))?;
        if args.error_rate > 0.0 {
            handle
                .set_error_rate(args.error_code, args.error_rate)
                .await?;
        }
        let status = handle.status();
        let device = status
            .device
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        println!("{name} {} -> {device}", link.display());
        modems.push(handle);
    }
    let server = match &args.control {
        Some(path) => {
            let task = control::serve(path, modems.clone())?;
            println!("control {}", path.display());
            Some(task)
        }
        None => None,
    };

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT")?,
        _ = term.recv() => {}
    }

    if let Some(task) = server {
        task.abort();
    }
    if let Some(path) = &args.control {
        let _ = std::fs::remove_file(path);
    }
    for m in &modems {
        let _ = m.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn arguments_make_distinct_modems() {
        let cli = Cli::try_parse_from([
            "modem-sim",
            "--count",
            "3",
            "--dir",
            "/run/sim",
            "--pin",
            "1234",
            "--report",
            "cdsi",
            "--report-status",
            "65",
            "--latency-ms",
            "0",
        ]);
        let args = cli.map(|c| c.sim).map_err(|e| e.to_string());
        let configs = args.map(|a| a.configs()).unwrap_or_default();
        let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["modem0", "modem1", "modem2"]);
        let mut imeis: Vec<&str> = configs.iter().map(|c| c.imei.as_str()).collect();
        let mut imsis: Vec<&str> = configs.iter().map(|c| c.imsi.as_str()).collect();
        imeis.dedup();
        imsis.dedup();
        assert_eq!((imeis.len(), imsis.len()), (3, 3));
        for c in &configs {
            assert_eq!(c.imei.len(), 15);
            let (body, check) = c.imei.split_at(14);
            assert_eq!(check, super::super::luhn_digit(body).to_string());
            assert_eq!(c.pin.as_deref(), Some("1234"));
            assert_eq!(c.report.mode, ReportMode::Cdsi);
            assert_eq!(c.report.status, 0x41);
            assert_eq!(c.latency_ms, 0);
        }
    }

    #[test]
    fn bad_report_mode_is_refused() {
        let cli = Cli::try_parse_from(["modem-sim", "--dir", "d", "--report", "sometimes"]);
        assert!(cli.is_err());
    }
}
