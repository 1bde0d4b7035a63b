//! Shared harness for end-to-end tests: runs the real `mail2sms` binary in a temporary folder
//! with its own config, store and port, and reads its queue back through the CLI.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mail2sms");

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub child: Option<Child>,
    /// The size of the tmpfs the store is on (`store/` beside the config), in a mount namespace
    /// of the gateway's own: see [`Gateway::start_on_tmpfs`]. `None`: the store is a file
    /// beside the config.
    pub store_tmpfs: Option<&'static str>,
}

/// A port that was free a moment ago, and not handed out before by this process: the kernel
/// may give the same port to two binds in a row once the first is closed, and two listeners of
/// one gateway (SMTP and SMPP) then collide.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

impl Gateway {
    /// Writes a config (the `extra` TOML is appended: [smtp.tls], users, ...) and starts the
    /// gateway, waiting until it accepts connections.
    pub fn start(smtp_extra: &str, extra: &str) -> Gateway {
        Gateway::start_with(smtp_extra, extra, None)
    }

    /// Like [`start`](Self::start), with the store on a tmpfs of `size` (`mount -o size=`)
    /// mounted on `store/` in a mount namespace of the gateway's own (`unshare`: tests run as
    /// root, as CI does), so that a test can fill the store's disk
    /// ([`fill_store_disk`](Self::fill_store_disk)) and not the machine's. The tmpfs lives as
    /// long as the process: a restart starts with an empty store.
    pub fn start_on_tmpfs(smtp_extra: &str, extra: &str, size: &'static str) -> Gateway {
        Gateway::start_with(smtp_extra, extra, Some(size))
    }

    fn start_with(smtp_extra: &str, extra: &str, store_tmpfs: Option<&'static str>) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("mail2sms.toml");
        let store = match store_tmpfs {
            None => "queue.db",
            Some(_) => {
                std::fs::create_dir(dir.path().join("store")).unwrap();
                "store/queue.db"
            }
        };
        let text = format!(
            r#"
[site]
name = "test"
hostname = "gw.test"
default_country = "FR"
sms_domains = ["sms", "sms.example.com"]

[store]
path = "{store}"

[smtp]
listen = ["127.0.0.1:{port}"]
max_message_bytes = 100000
max_recipients = 5
{smtp_extra}

{extra}
"#
        );
        // Tests send many mails from one sender: limits are off unless a test turns them on.
        let mut text = text;
        if !extra.contains("[quotas]") {
            text.push_str("\n[quotas]\nsender_parts_per_hour = 0\nsender_parts_per_day = 0\ndomain_parts_per_hour = 0\ndomain_parts_per_day = 0\n");
        }
        if !extra.contains("[guard]") {
            text.push_str("\n[guard]\nenabled = false\n");
        }
        std::fs::write(&config, text).unwrap();
        let mut g = Gateway {
            dir,
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            store_tmpfs,
        };
        g.spawn();
        g
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts (or restarts) the process and waits for the SMTP port.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("gateway.log"))
            .unwrap();
        self.spawn_logging_to(log);
    }

    /// [`spawn`](Self::spawn) with the process's output (its log) going to `log`.
    pub fn spawn_logging_to(&mut self, log: std::fs::File) {
        let cmd = match self.store_tmpfs {
            None => {
                let mut cmd = Command::new(BIN);
                cmd.args(["--config", self.config.to_str().unwrap(), "run"]);
                cmd
            }
            Some(size) => {
                let mut cmd = Command::new("unshare");
                cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount -t tmpfs -o size="$1" tmpfs "$2" && exec "$3" --config "$4" run"#)
                    .arg("sh")
                    .arg(size)
                    .arg(self.path("store"))
                    .arg(BIN)
                    .arg(&self.config);
                cmd
            }
        };
        self.launch(cmd, log);
        if self.store_tmpfs.is_some() {
            assert!(
                self.store_dir().join("queue.db").exists(),
                "the store is not on the tmpfs"
            );
        }
    }

    /// The directory the store is in, as the gateway sees it (for a store on a tmpfs, through
    /// `/proc/PID/root`: from outside the gateway's mount namespace).
    pub fn store_dir(&self) -> PathBuf {
        match (self.store_tmpfs, &self.child) {
            (Some(_), Some(c)) => PathBuf::from(format!(
                "/proc/{}/root{}",
                c.id(),
                self.path("store").display()
            )),
            (Some(_), None) => panic!("a store on a tmpfs is there only while the gateway runs"),
            (None, _) => self.dir.path().to_path_buf(),
        }
    }

    /// Fills the store's tmpfs with a file until a write fails with ENOSPC; removing the file
    /// (its path is returned) frees the space.
    pub fn fill_store_disk(&self) -> PathBuf {
        assert!(
            self.store_tmpfs.is_some(),
            "only a store on a tmpfs is filled"
        );
        let filler = self.store_dir().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        let err = loop {
            if let Err(e) = f.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
        filler
    }

    /// Starts `cmd` (which runs the gateway, directly or through a wrapper that `exec`s it),
    /// its output going to `log`, and waits for the SMTP port.
    pub fn launch(&mut self, mut cmd: Command, log: std::fs::File) {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mail2sms");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("gateway.log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_kill(c.id(), "TERM");
        c.wait().unwrap()
    }

    /// After [`fill_store_disk`](Self::fill_store_disk): mail over SMTP until the store refuses
    /// one (`452`), so that the room its files already had (the WAL's) is used up too, and its
    /// next write fails. Returns how many mails were still queued.
    pub fn use_up_store_room(&self) -> usize {
        let acked = self.path("acked.txt");
        let port = self.addr.port().to_string();
        let out = python(
            "smtp_client.py",
            &[
                "load",
                "127.0.0.1",
                &port,
                "1",
                "300",
                acked.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            self.log()
                .contains("could not queue a mail: the store's disk is full"),
            "{}",
            self.log()
        );
        std::fs::read_to_string(&acked)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Runs the CLI on this gateway's config (for a store on a tmpfs, in the gateway's mount
    /// namespace, with `nsenter`).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = match (self.store_tmpfs, &self.child) {
            (Some(_), Some(c)) => {
                let mut cmd = Command::new("nsenter");
                cmd.args(["--mount", "--target", &c.id().to_string()])
                    .arg(BIN);
                cmd
            }
            _ => Command::new(BIN),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// `mail2sms queue --json`, parsed.
    pub fn queue(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["queue", "--json"]);
        assert!(
            out.status.success(),
            "queue --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("queue --json is JSON")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Runs a program, failing the test with its output when it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    let name = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e} (is it installed? .ci/run installs it)"))
}

/// Runs a Python script from tests/e2e with arguments; its stdout is returned.
pub fn python(script: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(script);
    run(Command::new("python3").arg(path).args(args))
}

/// Writes a self-signed certificate and key for `localhost` with openssl.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Argon2 hash of a password, made by the binary itself.
pub fn hash_password(password: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub mod sim;
pub mod sink;
pub mod sites;

/// Every request in the gateway's queue, read through the queue's own reading API.
pub fn requests(g: &Gateway) -> Vec<mail2sms::queue::RequestStatus> {
    use mail2sms::queue;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = queue::Store::open_read_only(&g.path("queue.db"))
            .await
            .expect("the queue");
        let mut ids: Vec<String> = queue::list(&pool, None)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.request)
            .collect();
        ids.dedup();
        let mut out = Vec::new();
        for id in ids {
            out.push(queue::status(&pool, &id).await.unwrap());
        }
        pool.close().await;
        out
    })
}
