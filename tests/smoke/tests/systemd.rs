//! What ships for systemd, checked against real tools and the real binaries:
//!
//! - `systemd/*.service` pass `systemd-analyze verify` without a word of output, and the
//!   exposure score in each unit's header is the one `systemd-analyze security` reports;
//! - `examples/*.toml` parse with the daemons' own config code, show the defaults, and
//!   document every key;
//! - both daemons speak the `Type=notify` protocol the units rely on: READY=1 once
//!   listening, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 and exit 0 on SIGTERM.
//!
//! Needs `cargo build --bins` first and `systemd-analyze` (Debian package `systemd`).
//! Nothing here is skipped when a tool is missing: the test fails and says what to install.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use pyxis_smoke::{bin, command, http, log_field, Daemon};

/// The units and the daemons they start.
const UNITS: [(&str, &str); 2] = [("pyxis-agent", "agent.toml"), ("pyxis-coordinator", "coordinator.toml")];

/// The systemd version the exposure scores in the unit headers were taken with.
const SCORED_WITH: &str = "systemd 252 ";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn read(relative: &str) -> (PathBuf, String) {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

/// Runs `systemd-analyze ARGS`; a missing tool is a failure, not a skip.
fn systemd_analyze(args: &[&str], dir: &Path) -> Output {
    match Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is not installed, so the systemd units cannot be checked: \
             install the `systemd` package (Debian/Ubuntu: apt-get install systemd; CI \
             installs it)"
        ),
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn units_pass_systemd_analyze_verify_silently() {
    // `verify` also checks that each ExecStart= binary exists. Rather than weaken that,
    // verify copies whose ExecStart= points at the binaries just built, after checking
    // that the shipped line is exactly the documented one.
    let dir = tempfile::tempdir().unwrap();
    let mut copies = Vec::new();
    for (unit, config) in UNITS {
        let (path, text) = read(&format!("systemd/{unit}.service"));
        let installed = format!("/usr/local/bin/{unit}");
        let exec_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("ExecStart="))
            .collect();
        assert_eq!(
            exec_lines,
            [format!("ExecStart={installed} --config /etc/pyxis/{config}")],
            "{}: unexpected ExecStart=",
            path.display()
        );
        let built = bin(unit);
        let built = built.to_str().unwrap();
        assert!(
            !built.contains(char::is_whitespace),
            "the target directory path {built:?} has white space, which ExecStart= would split"
        );
        let copy = dir.path().join(format!("{unit}.service"));
        std::fs::write(
            &copy,
            text.replace(&format!("ExecStart={installed} "), &format!("ExecStart={built} ")),
        )
        .unwrap();
        copies.push(copy.to_str().unwrap().to_string());
    }
    let mut args = vec!["verify"];
    args.extend(copies.iter().map(String::as_str));
    let output = systemd_analyze(&args, dir.path());
    // verify exits 0 on warnings, so anything printed is a failure too.
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "systemd-analyze verify must succeed and print nothing:\n{}",
        describe(&output)
    );
}

/// `Overall exposure level for NAME.service: 1.4 OK` -> 1.4
fn exposure(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains("Overall exposure level"))?;
    let after = line.split(':').nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn unit_headers_state_the_security_exposure() {
    let version = systemd_analyze(&["--version"], &repo_root());
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    for (unit, _) in UNITS {
        let (path, text) = read(&format!("systemd/{unit}.service"));
        let stated = exposure(&text).unwrap_or_else(|| {
            panic!(
                "{}: the header must state `#   Overall exposure level: N OK`",
                path.display()
            )
        });
        let output = systemd_analyze(
            &["security", "--offline=yes", "--no-pager", path.to_str().unwrap()],
            &repo_root(),
        );
        assert!(output.status.success(), "{}", describe(&output));
        let actual = exposure(&String::from_utf8_lossy(&output.stdout))
            .unwrap_or_else(|| panic!("no exposure level in:\n{}", describe(&output)));
        if version.starts_with(SCORED_WITH) {
            assert!(
                (actual - stated).abs() < 0.05,
                "{}: systemd-analyze security scores {actual}, the header says {stated}: \
                 update the header (or the hardening)",
                path.display()
            );
        } else {
            // Other systemd versions weigh settings differently; only guard against a
            // unit that got markedly less sandboxed.
            assert!(
                actual <= stated + 1.0,
                "{}: exposure {actual} under {}, the header says {stated} (systemd 252)",
                path.display(),
                version.lines().next().unwrap_or("")
            );
        }
    }
}

/// Uncomments `# key = value` lines (not prose), to check every documented key.
fn uncomment(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(key, _)| {
                    !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
                }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The unit's sandbox must let the daemon write the data directory the example names.
fn assert_unit_writes(unit: &str, data_dir: &Path) {
    let (path, text) = read(&format!("systemd/{unit}.service"));
    let data_dir = data_dir.to_str().unwrap();
    let state = data_dir.strip_prefix("/var/lib/").unwrap();
    for line in [format!("ReadWritePaths={data_dir}"), format!("StateDirectory={state}")] {
        assert!(text.lines().any(|l| l == line), "{}: missing `{line}`", path.display());
    }
}

#[test]
fn example_agent_config_parses_with_the_defaults_and_every_key() {
    use pyxis_agent::config::{parse_file, AgentConfig, FileConfig, FlagConfig};
    let (path, text) = read("examples/agent.toml");
    let file = parse_file(&path, &text).unwrap();
    let config = AgentConfig::resolve(file, FlagConfig::default(), "host").unwrap();
    // Values shown uncommented are the defaults (coordinators and data_dir have none).
    let required_only = FileConfig {
        coordinators: Some(config.coordinators.clone()),
        data_dir: Some(config.data_dir.clone()),
        ..FileConfig::default()
    };
    let defaults = AgentConfig::resolve(required_only, FlagConfig::default(), "host").unwrap();
    assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    assert_eq!(config.data_dir, Path::new("/var/lib/pyxis-agent"));
    assert_unit_writes("pyxis-agent", &config.data_dir);

    // With the commented-out examples switched on, every key is set and still valid.
    let all = parse_file(&path, &uncomment(&text)).unwrap();
    let debug = format!("{all:?}");
    assert!(
        !debug.contains("None"),
        "examples/agent.toml does not show every key (even commented out): {debug}"
    );
    let runtimes = all.runtimes.clone().unwrap();
    // `custom` runtimes carry their whole command in the replica spec: nothing to configure.
    for kind in pyxis_agent::RUNTIME_KINDS.iter().filter(|k| **k != "custom") {
        assert!(
            runtimes.contains_key(*kind),
            "examples/agent.toml has no example for runtime kind {kind}"
        );
    }
    let config = AgentConfig::resolve(all, FlagConfig::default(), "host").unwrap();
    assert!(config.ca_hash.is_some() && config.join_token.is_some());
}

#[test]
fn example_coordinator_config_parses_with_the_defaults_and_every_key() {
    use pyxis_coordinator::config::{read_file, CoordinatorConfig, FileConfig, FlagConfig};
    let (path, text) = read("examples/coordinator.toml");
    let file = read_file(&path).unwrap();
    let config = CoordinatorConfig::resolve(file, FlagConfig::default()).unwrap();
    // Every value shown is the default.
    let defaults = CoordinatorConfig::resolve(FileConfig::default(), FlagConfig::default()).unwrap();
    assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    assert_unit_writes("pyxis-coordinator", &config.data_dir);

    let all: FileConfig = toml::from_str(&uncomment(&text)).unwrap();
    let debug = format!("{all:?}");
    assert!(
        !debug.contains("None"),
        "examples/coordinator.toml does not show every key (even commented out): {debug}"
    );
    let config = CoordinatorConfig::resolve(all, FlagConfig::default()).unwrap();
    assert!(config.ca_files.is_some());
}

/// A stand-in for systemd's notification socket. Like systemd, it reads datagrams as
/// they come (on a thread): the daemons send with blocking writes, and the kernel queue
/// holds only `net.unix.max_dgram_qlen` (often 10) messages.
struct NotifySocket {
    path: PathBuf,
    messages: mpsc::Receiver<String>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        // The timeout only bounds how long the reader takes to notice `stop`.
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (sender, messages) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if sender.send(text).is_err() {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => panic!("notify socket: {e}"),
                }
            }
        });
        Self {
            path,
            messages,
            stop,
            _dir: dir,
        }
    }

    /// Takes messages until one has the line `want`; returns every line seen before it.
    /// Panics, quoting the daemon's output, if `timeout` passes first.
    fn wait_for(&self, daemon: &Daemon, want: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(text) => {
                    if text.lines().any(|l| l == want) {
                        return seen;
                    }
                    seen.extend(text.lines().map(str::to_string));
                }
                Err(_) => panic!(
                    "no {want} from {daemon:?} within {timeout:?}; messages so far: {seen:?}\n\
                     output:\n{}",
                    daemon.tail()
                ),
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The sequence a `Type=notify` unit with `WatchdogSec=` relies on.
fn assert_notify_protocol(daemon: &mut Daemon, notify: &NotifySocket) {
    let before_ready = notify.wait_for(daemon, "READY=1", Duration::from_secs(30));
    assert!(
        before_ready.is_empty(),
        "READY=1 must be the first notification, got {before_ready:?} first"
    );
    // WATCHDOG_USEC=200000: fed every 100ms, so two arrive well within the limit.
    for _ in 0..2 {
        let between = notify.wait_for(daemon, "WATCHDOG=1", Duration::from_secs(10));
        assert!(
            !between.iter().any(|l| l == "STOPPING=1"),
            "stopped on its own: {between:?}\n{}",
            daemon.tail()
        );
    }
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "{daemon:?} exited with {status} after SIGTERM, not 0\n{}",
        daemon.tail()
    );
    // The datagram was queued before the exit; only watchdog pings may precede it.
    let before_stopping = notify.wait_for(daemon, "STOPPING=1", Duration::from_secs(5));
    assert!(
        before_stopping.iter().all(|l| l == "WATCHDOG=1"),
        "unexpected notifications before STOPPING=1: {before_stopping:?}"
    );
}

fn coordinator_command(data_dir: &Path) -> Command {
    let mut cmd = command("pyxis-coordinator");
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["--quic-addr", "127.0.0.1:0"])
        .args(["--api-addr", "127.0.0.1:0"])
        .args(["--gateway-addr", "127.0.0.1:0"]);
    cmd
}

#[test]
fn coordinator_speaks_sd_notify() {
    let data = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind();
    let mut cmd = coordinator_command(data.path());
    // WATCHDOG_PID unset: sd-notify 0.5's watchdog_enabled() then takes WATCHDOG_USEC as
    // meant for this process (systemd sets WATCHDOG_PID to the main PID; see the agent).
    cmd.env("NOTIFY_SOCKET", &notify.path).env("WATCHDOG_USEC", "200000");
    let mut coordinator = Daemon::spawn("pyxis-coordinator", cmd);
    assert_notify_protocol(&mut coordinator, &notify);
    let lines = coordinator.lines();
    assert!(
        lines.iter().any(|l| l.contains("feeding the systemd watchdog")),
        "{lines:#?}"
    );
}

#[test]
fn agent_speaks_sd_notify() {
    // A coordinator to join, outside any notify protocol.
    let coordinator_data = tempfile::tempdir().unwrap();
    let mut coordinator = Daemon::spawn("pyxis-coordinator", coordinator_command(coordinator_data.path()));
    let timeout = Duration::from_secs(30);
    let quic_line = coordinator.wait_for_line("agent link listening", timeout);
    let api_line = coordinator.wait_for_line("admin API listening", timeout);
    let quic = log_field(&quic_line, "addr").unwrap().to_string();
    let api = log_field(&api_line, "addr").unwrap().to_string();
    let admin_token = std::fs::read_to_string(coordinator_data.path().join("admin-token")).unwrap();
    let (status, body) = http(
        "POST",
        &format!("http://{api}/api/v1/tokens"),
        Some(admin_token.trim()),
        Some(r#"{"ttl":"1h","uses":1}"#),
    );
    assert!((200..300).contains(&status), "token create: {status} {body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let join_token = created["token"].as_str().unwrap();
    let ca_hash = created["ca_hash"].as_str().unwrap();

    let agent_data = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind();
    // As systemd does, set WATCHDOG_PID to the daemon's own PID: the shell exports its
    // PID and `exec`s the agent, which keeps it.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" "$@""#)
        .arg(bin("pyxis-agent"))
        .args(["--coordinator", &quic])
        .args(["--join-token", join_token])
        .args(["--ca-hash", ca_hash])
        .arg("--data-dir")
        .arg(agent_data.path())
        .args(["--name", "notify-test"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000");
    let mut agent = Daemon::spawn("pyxis-agent", cmd);
    // It really is a working agent under the notify protocol: it joins and registers.
    agent.wait_for_line("registered", timeout);
    assert_notify_protocol(&mut agent, &notify);

    let status = coordinator.terminate(timeout);
    assert!(status.success(), "coordinator: {status}\n{}", coordinator.tail());
}
