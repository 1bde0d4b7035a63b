//! Real peers for the IMAP tests: a Dovecot (Debian's `dovecot-imapd`) started with its own
//! configuration, certificates, mail folders and ports on 127.0.0.1, and an SMTP relay (Python's
//! aiosmtpd) that records the replies the gateway sends.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{free_port, run};

/// The mailbox user the tests log in as.
pub const USER: &str = "sms";
pub const PASSWORD: &str = "secret";

/// Which Dovecot the test wants.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Advertise IDLE and MOVE (Dovecot's default). Without, the capability list is given
    /// explicitly without them, so the gateway must poll and fall back to COPY + EXPUNGE.
    pub idle_and_move: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            idle_and_move: true,
        }
    }
}

pub struct Dovecot {
    pub dir: tempfile::TempDir,
    /// Plain port; STARTTLS is offered on it.
    pub port: u16,
    /// Implicit TLS port.
    pub tls_port: u16,
    /// The certificate authority that signed the server certificate (for `ca_file`).
    pub ca: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
}

/// Numeric ids of the unprivileged user mail is stored as (Dovecot refuses uid 0).
fn nobody() -> (u32, u32) {
    let out = run(Command::new("id").args(["-u", "nobody"]));
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = run(Command::new("id").args(["-g", "nobody"]));
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

impl Dovecot {
    pub fn start(opts: Options) -> Dovecot {
        let me = run(Command::new("id").arg("-u"));
        assert!(
            String::from_utf8_lossy(&me.stdout).trim() == "0",
            "the IMAP tests start Dovecot, which must run as root to switch to its own users"
        );
        let dir = tempfile::tempdir().unwrap();
        // Dovecot's login and mail processes run as other users: they must reach the folder.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (uid, gid) = nobody();
        let home = dir.path().join("mail").join(USER);
        std::fs::create_dir_all(&home).unwrap();
        for p in [dir.path().join("mail"), home.clone()] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
        let ca = make_certificates(dir.path());
        std::fs::write(
            dir.path().join("passwd"),
            format!(
                "{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{}::\n",
                home.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let tls_port = free_port();
        let d = dir.path().display();
        let capability = if opts.idle_and_move {
            String::new()
        } else {
            // Dovecot 2.3's post-login list without IDLE, MOVE and NOTIFY.
            "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+ SORT \
             SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND \
             URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED \
             I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH \
             LIST-STATUS BINARY STATUS=SIZE SAVEDATE\n"
                .to_string()
        };
        let conf = dir.path().join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                r#"base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{d}/server.pem
ssl_key = <{d}/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}
mail_location = maildir:~/Maildir
{capability}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
}}
"#
            ),
        )
        .unwrap();
        let mut dv = Dovecot {
            dir,
            port,
            tls_port,
            ca,
            conf,
            child: None,
        };
        dv.spawn();
        dv
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dovecot.out"))
            .unwrap();
        let child = Command::new("dovecot")
            .args(["-F", "-c", self.conf.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start dovecot (scripts/test installs dovecot-imapd)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("* OK") {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dovecot exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dovecot did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops Dovecot as a crash or a restart would: the master and every process it started.
    /// (Dovecot 2.3's master leaves running IMAP sessions alone when it stops; a restart that
    /// keeps connections open would test nothing.)
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let master = c.id().to_string();
            let out = run(Command::new("pgrep").args(["-P", &master]));
            let children: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let _ = Command::new("kill").args(["-TERM", &master]).status();
            let _ = c.wait();
            for pid in &children {
                // Gone already when the master did take it down.
                let _ = Command::new("kill")
                    .args(["-KILL", pid])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // The master is gone; wait until the port is free again so the restart can bind it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        let mut s =
            std::fs::read_to_string(self.dir.path().join("dovecot.out")).unwrap_or_default();
        s.push_str(
            &std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default(),
        );
        s
    }

    /// Runs `tests/e2e/imap_client.py` against this server; returns its standard output.
    pub fn client(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut all = vec!["127.0.0.1", &port, USER, PASSWORD];
        all.extend_from_slice(args);
        let out = super::common::python("imap_client.py", &all);
        assert!(
            out.status.success(),
            "imap_client.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts `imap_client.py` without waiting for it.
    pub fn client_spawn(&self, args: &[&str]) -> Child {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/imap_client.py");
        Command::new("python3")
            .arg(script)
            .args(["127.0.0.1", &self.port.to_string(), USER, PASSWORD])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3")
    }

    pub fn ids(&self, folder: &str) -> Vec<String> {
        self.client(&["ids", folder])
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn count(&self, folder: &str) -> i64 {
        self.client(&["count", folder]).trim().parse().unwrap()
    }

    /// The `[[mailbox]]` table for a gateway watching `folder` here.
    pub fn mailbox_toml(&self, folder: &str, tls: &str, extra: &str) -> String {
        let port = if tls == "implicit" {
            self.tls_port
        } else {
            self.port
        };
        format!(
            r#"
[[mailbox]]
name = "test-box"
host = "127.0.0.1"
port = {port}
tls = "{tls}"
ca_file = "{ca}"
user = "{USER}"
password = "{PASSWORD}"
folder = "{folder}"
processed_folder = "Processed"
failed_folder = "Failed"
reconnect_max_secs = 2
command_timeout_secs = 20
{extra}
"#,
            ca = self.ca.display()
        )
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it, made with openssl.
/// Returns the CA certificate's path.
fn make_certificates(dir: &Path) -> PathBuf {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    ok(run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=mail2sms test CA"])
        .args(["-keyout", &p("ca.key"), "-out", &p("ca.pem")])));
    ok(run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .args(["-subj", "/CN=localhost"])
        .args([
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ])));
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ok(run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in", &p("server.csr")])
        .args([
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
        ])
        .args([
            "-extfile",
            &p("server.ext"),
            "-out",
            &p("server.pem"),
        ])));
    dir.join("ca.pem")
}

/// Python with aiosmtpd: `python3` when it has it, else Debian's own interpreter (where
/// `python3-aiosmtpd` installs it) when `python3` on the PATH is another one.
fn python_with_aiosmtpd() -> String {
    for candidate in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return candidate.to_string();
        }
    }
    panic!("no Python with aiosmtpd (scripts/test installs python3-aiosmtpd)");
}

/// An SMTP relay that records what it receives.
pub struct SmtpSink {
    pub port: u16,
    pub file: PathBuf,
    child: Child,
}

impl SmtpSink {
    pub fn start(dir: &Path) -> SmtpSink {
        let port = free_port();
        let file = dir.join("relayed.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/smtp_sink.py");
        let mut child = Command::new(python_with_aiosmtpd())
            .arg(script)
            .arg(port.to_string())
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start smtp_sink.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "smtp_sink.py did not start");
        SmtpSink { port, file, child }
    }

    /// The mails received so far.
    pub fn mails(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
