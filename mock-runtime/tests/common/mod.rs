//! Test harness: starts `pyxis-mock-runtime` as a real process (its own process group),
//! collects its output, and talks HTTP to it. Every wait polls against a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Output lines seen so far, and how many streams have closed.
#[derive(Default)]
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
    closed: usize,
}

type Shared = Arc<(Mutex<Output>, Condvar)>;

/// A running mock.
pub struct Mock {
    child: Child,
    output: Shared,
    /// `HOST:PORT` from `listening on`, once seen.
    pub address: Option<String>,
    status: Option<ExitStatus>,
}

fn pump(stream: impl Read + Send + 'static, output: Shared, is_stdout: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let (lock, cvar) = &*output;
            let mut out = lock.lock().unwrap();
            if is_stdout {
                out.stdout.push(line);
            } else {
                out.stderr.push(line);
            }
            cvar.notify_all();
        }
        let (lock, cvar) = &*output;
        lock.lock().unwrap().closed += 1;
        cvar.notify_all();
    });
}

/// A port free right now (bound then released): for flavours whose port is closed while
/// loading, where `listening on` comes too late to learn it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Mock {
    /// Starts the mock with `args` and extra environment, without waiting for anything.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Mock {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pyxis-mock-runtime"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (name, _) in std::env::vars() {
            if name.starts_with("PYXIS_MOCK_") || name.starts_with("OLLAMA_") || name.starts_with("LLAMA_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("start pyxis-mock-runtime");
        let output: Shared = Arc::default();
        pump(child.stdout.take().unwrap(), output.clone(), true);
        pump(child.stderr.take().unwrap(), output.clone(), false);
        Mock {
            child,
            output,
            address: None,
            status: None,
        }
    }

    /// Starts the mock without waiting.
    pub fn spawn(args: &[&str]) -> Mock {
        Mock::spawn_with_env(args, &[])
    }

    /// Starts the mock and waits for `listening on HOST:PORT`.
    pub fn start(args: &[&str]) -> Mock {
        Mock::start_with_env(args, &[])
    }

    /// Starts the mock with extra environment and waits for `listening on HOST:PORT`.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Mock {
        let mut mock = Mock::spawn_with_env(args, env);
        mock.wait_listening();
        mock
    }

    /// Waits for `listening on HOST:PORT` and remembers the address.
    pub fn wait_listening(&mut self) -> String {
        let line = self.wait_for_line("listening on ", PATIENCE);
        let address = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("not a listening line: {line}"))
            .to_string();
        self.address = Some(address.clone());
        address
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://HOST:PORT/path` on the API port.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.address.as_deref().expect("mock not listening yet")
        )
    }

    /// Stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.output.0.lock().unwrap().stdout.clone()
    }

    /// Stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        self.output.0.lock().unwrap().stderr.clone()
    }

    /// Waits until a stdout line starts with `prefix` (at column 0) or contains it (log
    /// lines); returns the line.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.output;
        let mut out = lock.lock().unwrap();
        loop {
            if let Some(line) = out
                .stdout
                .iter()
                .find(|l| l.starts_with(pattern))
                .or_else(|| out.stdout.iter().find(|l| l.contains(pattern)))
            {
                return line.clone();
            }
            let now = Instant::now();
            if out.closed == 2 || now >= deadline {
                panic!(
                    "no line with {pattern:?} within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    out.stdout.join("\n"),
                    out.stderr.join("\n")
                );
            }
            out = cvar.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Sends `signal` (`TERM`, `KILL`...) to the mock's whole process group.
    pub fn signal_group(&self, signal: &str) {
        signal_group(self.pid(), signal);
    }

    /// Sends `signal` to the mock process only.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                self.wait_output_closed(Duration::from_secs(2));
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout().join("\n"),
                    self.stderr().join("\n")
                );
            }
            // Exit is only observable by polling waitpid; poll often, up to the deadline.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (up to `timeout`) until stdout and stderr are closed, so every line the
    /// process wrote has been collected. A child holding the pipes keeps them open.
    fn wait_output_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.output;
        let mut out = lock.lock().unwrap();
        while out.closed < 2 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            out = cvar.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// The exit code, or panics with the signal that ended it.
    pub fn exit_code(&mut self, timeout: Duration) -> i32 {
        let status = self.wait_exit(timeout);
        status
            .code()
            .unwrap_or_else(|| panic!("killed by signal {:?}", status.signal()))
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if self.status.is_none() {
            signal_group(self.pid(), "KILL");
            let _ = self.child.wait();
        }
    }
}

/// `kill -SIGNAL -- -PGID`.
pub fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .status();
}

/// Process state from `/proc/PID/stat`: `None` if gone, else (state char, ppid, pgrp).
pub fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Whether a process is alive (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _, _)) if state != 'Z' && state != 'X')
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
pub fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An HTTP client that returns every status (no error for 4xx/5xx).
pub fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// `GET url` → (status, body), or the transport error text (connection refused...).
pub fn try_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut response = client(timeout).get(url).call().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// `GET url` → (status, body).
pub fn get(url: &str) -> (u16, String) {
    try_get(url, PATIENCE).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `GET url` → parsed JSON, expecting 200.
pub fn get_json(url: &str) -> serde_json::Value {
    let (status, body) = get(url);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// `POST url` with a raw body → (status, body).
pub fn post_raw(url: &str, body: &str) -> (u16, String) {
    let mut response = client(PATIENCE)
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

/// `POST url` with JSON → (status, parsed body).
pub fn post(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = post_raw(url, &body.to_string());
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: {e}: {text}"));
    (status, value)
}

/// `POST url` expecting an SSE stream: the `data:` payloads in order, and the time from
/// sending to the first payload with content.
pub fn post_stream(url: &str, body: &serde_json::Value) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let response = client(PATIENCE)
        .post(url)
        .send_json(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let reader = BufReader::new(response.into_body().into_reader());
    let mut events = Vec::new();
    let mut first = None;
    let mut blank_after_event = true;
    for line in reader.lines() {
        let line = line.unwrap();
        if line.is_empty() {
            blank_after_event = true;
            continue;
        }
        assert!(blank_after_event, "events must be separated by a blank line: {line}");
        blank_after_event = false;
        let data = line
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data line: {line}"));
        if first.is_none() {
            first = Some(started.elapsed());
        }
        events.push(data.to_string());
    }
    (events, first.unwrap_or_default())
}

/// A Prometheus sample's value: the first line starting with `prefix` (name and labels).
pub fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{metrics}"))
}
