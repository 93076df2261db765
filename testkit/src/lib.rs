//! Test fixtures shared by Cairn's crates: the local AWS.
//!
//! [`moto()`] starts one moto server per test binary on a free loopback port, from the
//! project's `.venv` (installed by `scripts/local-aws install`, which the test command
//! runs) through `scripts/local_aws.py`, which adds CloudWatch's CBOR protocol in front of
//! moto (the Rust SDK speaks nothing else to CloudWatch), or from the binary named by
//! `CAIRN_MOTO_SERVER`. Tests never skip when moto is missing: they fail with how to
//! install it.
//!
//! [`FaultProxy`] goes between a client and moto to inject faults (errors, throttling,
//! dropped connections, lost answers) and to hold a call while a test kills its client.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod proxy;

pub use proxy::{is_mutating_action, Fault, FaultPlan, FaultProxy, FaultedCall, Holder, ProxyStats, Release};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `GET path` on loopback `port` (HTTP/1.1, the connection closed after): the answer's
/// status and body, or `None` while nothing answers there.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
}

/// One raw HTTP/1.1 `request` on loopback `port`, which must ask to close the
/// connection: the answer's status and body.
pub fn http(port: u16, request: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    Some((status, answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()))
}

/// The moto release the project tests against (see shared/moto-notes.md).
pub const MOTO_VERSION: &str = "5.2.5";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    port: u16,
    // Kept so the watchdog's stdin stays open for the life of the test binary.
    _child: Mutex<Child>,
}

impl Moto {
    /// The endpoint, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the standard AWS environment variables to reach this server with test
    /// credentials, so `aws_config::load_defaults` picks them up.
    pub fn configure_env(&self) {
        // Once per test binary, before any test's client reads the environment: tests
        // run on many threads, and the environment must not change under them.
        static CONFIGURED: OnceLock<()> = OnceLock::new();
        CONFIGURED.get_or_init(|| {
            std::env::set_var("AWS_ENDPOINT_URL", self.endpoint());
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_REGION", "us-east-1");
            std::env::remove_var("AWS_PROFILE");
        });
    }
}

/// The command that serves the local AWS: `CAIRN_MOTO_SERVER` if set, else the project's
/// moto with CloudWatch's CBOR protocol added (`scripts/local_aws.py`), and the file that
/// must exist for it to run.
fn server_command() -> (String, PathBuf) {
    if let Ok(path) = std::env::var("CAIRN_MOTO_SERVER") {
        return (format!("\"{path}\""), PathBuf::from(path));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    let launcher = root.join("scripts/local_aws.py");
    (format!("\"{}\" \"{}\"", python.display(), launcher.display()), root.join(".venv/bin/moto_server"))
}

/// The shared moto server of this test binary, started on first use.
///
/// # Panics
/// If moto is not installed or does not start: the message says how to install it.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(start)
}

fn start() -> Moto {
    let (command, bin) = server_command();
    if !bin.exists() {
        panic!(
            "the local AWS (moto server) is not installed: {} does not exist.\n\
             Install it with `scripts/local-aws install` (a Python venv with moto[server]=={MOTO_VERSION}; \
             needs python3 and pip), or point CAIRN_MOTO_SERVER at a moto_server binary.",
            bin.display()
        );
    }
    let port = free_port();
    // moto must not outlive the test binary, even if it is killed: a shell watchdog
    // holds our end of a pipe and stops moto when the pipe closes.
    let script = format!("{command} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; read _; kill $m");
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start the moto server ({}): {e}", bin.display()));
    wait_until_up(port);
    Moto { port, _child: Mutex::new(child) }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// Polls until the server answers HTTP, for at most 60 s (moto takes about a second).
fn wait_until_up(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let request = "GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
            let mut head = [0u8; 12];
            if s.write_all(request.as_bytes()).is_ok() && s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/") {
                return;
            }
        }
        if Instant::now() > deadline {
            panic!("the moto server did not answer on 127.0.0.1:{port} within 60 s; run `scripts/local-aws run {port}` to see why");
        }
        // Waiting for another process to start: there is nothing to await.
        std::thread::sleep(Duration::from_millis(50));
    }
}
