//! Support library for the whole-binary smoke tests in `tests/`.
//!
//! The smoke tests run the real `pyxis-coordinator`, `pyxis-agent` and `pyxis` binaries
//! as processes, the way an operator would. They do not build them: run
//! `cargo build --bins` first (CI does), then `cargo test -p pyxis-smoke`.
//!
//! What is here:
//! - [`bin`]: the path of a built workspace binary, and [`command`]: a [`Command`] for it
//!   with a clean environment.
//! - [`Daemon`]: a child process whose stdout and stderr lines are captured, with
//!   [`Daemon::wait_for_line`] to wait (with a deadline) for a log line, and
//!   [`Daemon::terminate`] for a graceful SIGTERM stop. The child is killed on drop.
//! - [`log_field`]: the value of a `key=value` field in a log line, for example the
//!   `addr=` of `admin API listening ... addr=127.0.0.1:PORT`.
//! - [`http`]: a minimal blocking HTTP/1.1 client (no extra dependencies).
//!
//! Every wait has a deadline, and every failure panics with what was seen so far (the
//! captured log), so a failing test explains itself.
//!
//! ```no_run
//! use std::time::Duration;
//! use pyxis_smoke::{command, http, log_field, Daemon};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut cmd = command("pyxis-coordinator");
//! cmd.arg("--data-dir").arg(dir.path())
//!     .args(["--quic-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
//!     .args(["--gateway-addr", "127.0.0.1:0"]);
//! let mut coordinator = Daemon::spawn("coordinator", cmd);
//! let line = coordinator.wait_for_line("admin API listening", Duration::from_secs(20));
//! let api = log_field(&line, "addr").unwrap();
//! let (status, _body) = http("GET", &format!("http://{api}/healthz"), None, None);
//! assert_eq!(status, 200);
//! assert!(coordinator.terminate(Duration::from_secs(20)).success());
//! ```

use std::{
    fmt,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

/// How many of the last captured lines a panic message quotes.
const TAIL_LINES: usize = 60;

/// Path of a built workspace binary such as `pyxis-agent`, `pyxis-coordinator` or
/// `pyxis`.
///
/// Looks in `$PYXIS_BIN_DIR` when set, else in the cargo target directory this test runs
/// from (`target/debug/deps/<test>` gives `target/debug/<name>`). Panics, saying to run
/// `cargo build --bins`, when the binary is not there.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("PYXIS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().unwrap_or_else(|e| panic!("cannot find the running test binary: {e}"));
            // target/<profile>/deps/<test-binary> -> target/<profile>
            let mut dir = exe.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist: build the binaries first with `cargo build --bins` \
         (or point PYXIS_BIN_DIR at a directory holding {name})",
        path.display()
    );
    path
}

/// A [`Command`] for the built binary `name` (see [`bin`]) with a predictable
/// environment: `RUST_LOG=info` (the log lines tests wait for are at info level),
/// `NO_COLOR=1`, and none of the systemd variables (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
/// `WATCHDOG_PID`, `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) that a test runner
/// started by systemd would otherwise pass on. Set them on the result where a test wants
/// them.
pub fn command(name: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Captured output of a [`Daemon`], shared with its reader threads.
#[derive(Debug, Default)]
struct Output {
    /// Every line read so far, stdout and stderr interleaved in arrival order.
    lines: Vec<String>,
    /// How many of the two pipes (stdout, stderr) have reached end of file.
    closed: usize,
}

#[derive(Debug, Default)]
struct Shared {
    output: Mutex<Output>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A child process with captured output, killed (SIGKILL) when dropped.
///
/// [`Daemon::spawn`] sets `NO_COLOR=1` so log lines carry no ANSI colour codes, and
/// captures stdout and stderr line by line; stdin is closed.
pub struct Daemon {
    name: String,
    child: Child,
    shared: Arc<Shared>,
    exit: Option<ExitStatus>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Starts `cmd`; `name` labels it in panic messages. Panics if it cannot be started.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let shared = Arc::new(Shared::default());
        let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        for pipe in [stdout, stderr] {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                if let Some(pipe) = pipe {
                    for line in BufReader::new(pipe).lines() {
                        let Ok(line) = line else { break };
                        shared.lock().lines.push(line);
                        shared.changed.notify_all();
                    }
                }
                shared.lock().closed += 1;
                shared.changed.notify_all();
            });
        }
        Self {
            name: name.to_string(),
            child,
            shared,
            exit: None,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A copy of every line captured so far.
    pub fn lines(&self) -> Vec<String> {
        self.shared.lock().lines.clone()
    }

    /// The last lines captured, for failure messages.
    pub fn tail(&self) -> String {
        let output = self.shared.lock();
        let start = output.lines.len().saturating_sub(TAIL_LINES);
        output.lines[start..].join("\n")
    }

    /// Waits until a captured line contains `pattern` (a plain substring) and returns
    /// that line; lines seen before the call count too. Panics with the captured log if
    /// `timeout` passes first or the process closes its output (exits) without one.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut output = self.shared.lock();
        loop {
            if let Some(line) = output.lines.iter().find(|l| l.contains(pattern)) {
                return line.clone();
            }
            let now = Instant::now();
            if output.closed == 2 || now >= deadline {
                let why = if output.closed == 2 {
                    "it closed its output (exited?)"
                } else {
                    "timed out"
                };
                let start = output.lines.len().saturating_sub(TAIL_LINES);
                let tail = output.lines[start..].join("\n");
                drop(output);
                panic!(
                    "{}: no line containing {pattern:?} after {timeout:?}: {why}. Output:\n{tail}",
                    self.name
                );
            }
            output = self
                .shared
                .changed
                .wait_timeout(output, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` if it is still
    /// running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    return Some(status);
                }
                Ok(None) => {}
                Err(e) => panic!("{}: cannot wait for the process: {e}", self.name),
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Exit is only observable by polling waitpid; poll often, up to the deadline.
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM (a graceful stop, as systemd does) and waits up to `timeout` for the
    /// exit status. Panics with the captured log if the process does not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        self.signal("TERM");
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => {
                let tail = self.tail();
                self.kill();
                panic!(
                    "{}: still running {timeout:?} after SIGTERM. Output:\n{tail}",
                    self.name
                );
            }
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`, ...) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("{}: cannot run kill(1): {e}", self.name));
        assert!(
            status.success(),
            "{}: kill -{signal} {} failed: {status}",
            self.name,
            self.child.id()
        );
    }

    /// Kills the process (SIGKILL) and reaps it. Does nothing if it already exited.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exit = Some(status);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of field `key` in a `tracing` log line: for `... addr=127.0.0.1:7080 x=1`,
/// `log_field(line, "addr")` is `Some("127.0.0.1:7080")`. Quoted values (`key="a b"`) are
/// returned without the quotes.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("{key}=");
    let mut search = 0;
    while let Some(found) = line[search..].find(&needle) {
        let start = search + found;
        let at_word_start = start == 0 || line[..start].ends_with(' ');
        let value = &line[start + needle.len()..];
        if at_word_start {
            return Some(match value.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or(""),
                None => value.split(' ').next().unwrap_or(""),
            });
        }
        search = start + needle.len();
    }
    None
}

/// Sends one HTTP/1.1 request and returns the status code and the body.
///
/// `url` is `http://HOST:PORT/PATH`; `token` becomes `Authorization: Bearer TOKEN`;
/// `body`, when given, is sent as `application/json`. Handles `Content-Length`, chunked
/// and close-delimited responses. Panics on connection or protocol errors (a test wants
/// to know), with a 30 s limit on each read and write.
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let response = request(method, url, &headers, body);
    (response.status, response.body)
}

/// A response with its headers (names lowercased).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Decoded body.
    pub body: String,
}

impl HttpResponse {
    /// The first header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// [`http`] with any request headers, returning the response headers too.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> HttpResponse {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("only http:// URLs are supported, not {url:?}"));
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let timeout = Duration::from_secs(30);
    let addr = host
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host:?} in {url:?}"));
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).unwrap_or_else(|e| panic!("{method} {url}: cannot connect: {e}"));
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE") {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {url}: cannot send the request: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {url}: cannot read the response: {e}"));
    let (status, body) = parse_response(&raw).unwrap_or_else(|why| {
        panic!(
            "{method} {url}: malformed response ({why}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    });
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let headers = String::from_utf8_lossy(&raw[..split])
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse { status, headers, body }
}

/// Splits a complete HTTP/1.1 response into status code and decoded body.
fn parse_response(raw: &[u8]) -> Result<(u16, String), &'static str> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let payload = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("bad status line")?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        }
    }
    let body = if chunked {
        decode_chunked(payload)?
    } else if let Some(length) = length {
        payload
            .get(..length)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        payload.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Decodes a `Transfer-Encoding: chunked` body (trailers are ignored).
fn decode_chunked(mut payload: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut body = Vec::new();
    loop {
        let end = payload
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&payload[..end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        payload = &payload[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(payload.get(..size).ok_or("truncated chunk")?);
        payload = payload.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields() {
        let line = "2026-01-01T00:00:00Z  INFO pyxis_coordinator::server: admin API listening \
                    (/api/v1, /metrics) addr=127.0.0.1:7080 name=\"a b\" xaddr=no";
        assert_eq!(log_field(line, "addr"), Some("127.0.0.1:7080"));
        assert_eq!(log_field(line, "name"), Some("a b"));
        assert_eq!(log_field(line, "missing"), None);
        assert_eq!(log_field("xaddr=1", "addr"), None);
    }

    #[test]
    fn responses() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_response(raw), Ok((200, "ok".to_string())));
        let raw = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw), Ok((201, "abcde".to_string())));
        let raw = b"HTTP/1.1 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(raw), Ok((404, "nope".to_string())));
        assert!(parse_response(b"garbage").is_err());
    }
}

/// Processes whose command line contains `marker`, by pid (a test's runtimes carry a
/// per-test path on their command line).
pub fn processes_with(marker: &str) -> std::collections::BTreeMap<u32, String> {
    let mut found = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        // A runtime's command line rarely names the data dir, but it runs in its replica
        // directory under it.
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if cmdline.contains(marker) || cwd.contains(marker) {
            found.insert(pid, cmdline);
        }
    }
    found
}

/// The addresses TCP sockets listen on at `port` on this machine (from `/proc/net/tcp` and
/// `tcp6`): what a server really bound, whatever it was told.
pub fn listening_on(port: u16) -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; st 0A is LISTEN.
            let (Some(local), Some("0A")) = (fields.get(1), fields.get(3).copied()) else {
                continue;
            };
            let Some((addr, p)) = local.split_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            // The kernel prints each 32-bit word of the address in host (little-endian) order.
            let mut bytes = Vec::new();
            for word in addr.as_bytes().chunks(8) {
                let word = u32::from_str_radix(std::str::from_utf8(word).unwrap_or("0"), 16).unwrap_or(0);
                bytes.extend_from_slice(&word.to_le_bytes());
            }
            match bytes.len() {
                4 => found.push(std::net::IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
                16 => {
                    let mut v6 = [0u8; 16];
                    v6.copy_from_slice(&bytes);
                    found.push(std::net::IpAddr::from(v6));
                }
                _ => {}
            }
        }
    }
    found
}

/// Kills every process marked `marker` when dropped, so a failing test leaves no runtime
/// behind (agents deliberately leave runtimes running when they exit).
#[derive(Debug)]
pub struct Reaper(pub String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in processes_with(&self.0).keys() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Polls `check` every 50 ms until it gives `Ok`; on timeout, panics with the last `Err`
/// (what was seen instead).
pub async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if std::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen:\n{seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The real runtime: llama.cpp's `llama-server` and the SmolLM2-135M model, built and
/// cached by `scripts/fetch-llama-server.sh` (which `.ci/run` runs first) under
/// `$PYXIS_CACHE` (default `~/.cache/pyxis`), or `PYXIS_LLAMA_SERVER` / `PYXIS_LLAMA_MODEL`.
pub fn llama_server() -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("PYXIS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pyxis")))
        .unwrap_or_else(|| PathBuf::from(".cache/pyxis"));
    let server = std::env::var_os("PYXIS_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("bin/llama-server"));
    let model = std::env::var_os("PYXIS_LLAMA_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        server.is_file() && model.is_file(),
        "{} or {} is missing: run scripts/fetch-llama-server.sh (.ci/run does)",
        server.display(),
        model.display()
    );
    (server, model)
}
