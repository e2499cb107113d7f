//! The operating-system edges of runtime supervision: spawning a runtime in its own process
//! group with its output in files, reading `/proc`, signalling whole groups, cgroup v2
//! placement, port reservation and log files.
//!
//! Nothing here keeps state or decides anything: the supervisor ([`super::supervisor`])
//! calls these functions and its state machine ([`super::replica`]) decides when.
//!
//! Invariants: a runtime's output goes to files, never to pipes held by the agent, so a
//! runtime outlives an agent crash without blocking on a full pipe or dying of `SIGPIPE`;
//! every signal goes to a whole process group (and cgroup), never to one process only, so
//! the workers a runtime forks are stopped with it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::ExitStatus,
};

use nix::{
    errno::Errno,
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

/// Environment variables of the agent that a runtime must not inherit: systemd's notify and
/// watchdog variables (a runtime that speaks sd_notify must not report for the agent) and
/// the join token.
pub const SCRUBBED_ENV: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "PYXIS_JOIN_TOKEN"];

/// The line the agent writes to both log files before each run, so that a log tail shows
/// only the last run's output.
pub const RUN_MARKER: &str = "--- pyxis-agent: starting run";

/// One process as `/proc/PID/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: u32,
    /// State letter (`R`, `S`, `D`, `Z`, ...).
    pub state: char,
    /// Parent process id.
    pub ppid: u32,
    /// Process group id.
    pub pgid: u32,
    /// Start time in clock ticks after boot (field 22): with the pid, it names a process
    /// unambiguously, because a reused pid has a later start time.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie has exited: it holds nothing but its pid until its parent reaps it.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    Some(ProcStat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Reads one process's stat line; `None` when it does not exist (or cannot be read).
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

/// Whether the process `pid` that started at `start_time` is still running (not a zombie).
pub fn is_running(pid: u32, start_time: u64) -> bool {
    read_stat(pid).is_some_and(|s| s.start_time == start_time && !s.is_zombie())
}

/// Every process on the host that is not a zombie.
pub fn all_processes() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(read_stat)
        .filter(|s| !s.is_zombie())
        .collect()
}

/// The process groups of the runtimes found by working directory: every process whose
/// current directory is `replicas_dir/NAME` (or below it), grouped by replica name and
/// process group. The supervisor starts each runtime in its replica's directory, so this
/// finds runtimes even when the ledger cannot name them (a corrupt file, an unreadable
/// record, an agent killed between a spawn and the ledger write). Groups in `exclude`
/// (the agent's own) are left out. A process that changed its directory is not found.
pub fn groups_by_cwd(replicas_dir: &Path, exclude: &[u32]) -> BTreeMap<String, Vec<ProcessGroup>> {
    let base = fs::canonicalize(replicas_dir).unwrap_or_else(|_| replicas_dir.to_path_buf());
    // Replica name -> pgid -> (members' start times, leader start time if seen).
    let mut found: BTreeMap<String, BTreeMap<u32, (u64, Option<u64>)>> = BTreeMap::new();
    for stat in all_processes() {
        if exclude.contains(&stat.pgid) || stat.pgid <= 1 {
            continue;
        }
        let Ok(cwd) = fs::read_link(format!("/proc/{}/cwd", stat.pid)) else {
            continue;
        };
        let Some(name) = cwd
            .strip_prefix(&base)
            .ok()
            .and_then(|rest| rest.components().next())
            .and_then(|c| c.as_os_str().to_str())
        else {
            continue;
        };
        let slot = found
            .entry(name.to_string())
            .or_default()
            .entry(stat.pgid)
            .or_insert((u64::MAX, None));
        slot.0 = slot.0.min(stat.start_time);
        if stat.pid == stat.pgid {
            slot.1 = Some(stat.start_time);
        }
    }
    found
        .into_iter()
        .map(|(name, groups)| {
            let groups = groups
                .into_iter()
                .map(|(pgid, (earliest, leader))| ProcessGroup {
                    pgid,
                    leader_start_time: leader.unwrap_or(earliest),
                    cgroup: None,
                })
                .collect();
            (name, groups)
        })
        .collect()
}

/// Where `program` is: itself when it names a path (has a `/`), else the first executable
/// file of that name in the directories of `path` (`PATH`). Says why not when it is not
/// found or not executable.
pub fn resolve_program(program: &str, path: Option<&std::ffi::OsStr>) -> Result<PathBuf, String> {
    if program.is_empty() {
        return Err("the command is empty".into());
    }
    if program.contains('/') {
        let candidate = PathBuf::from(program);
        return match fs::metadata(&candidate) {
            Ok(m) if m.is_file() && is_executable(&m) => Ok(candidate),
            Ok(_) => Err(format!("{program} is not an executable file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!("{program} does not exist")),
            Err(e) => Err(format!("cannot use {program}: {e}")),
        };
    }
    path.map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|candidate| fs::metadata(candidate).is_ok_and(|m| m.is_file() && is_executable(&m)))
        .ok_or_else(|| format!("{program} is not found on PATH"))
}

fn is_executable(metadata: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o111 != 0
}

/// A runtime's processes: its process group and, where used, its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessGroup {
    /// Process group id (the pid of the runtime's main process, which leads the group).
    pub pgid: u32,
    /// Start time of the group leader, to tell our group from a later one with the same id.
    pub leader_start_time: u64,
    /// The runtime's cgroup directory, when cgroups are used.
    pub cgroup: Option<PathBuf>,
}

impl ProcessGroup {
    /// The processes left in the group (and cgroup), zombies excluded.
    ///
    /// Once the leader has exited its id can be reused, but only by a process that is not
    /// in our group while the group lives (the kernel does not hand out an id in use as a
    /// process group id). So: if a process with the group's id exists and is not our
    /// leader, the group is someone else's and only the cgroup is looked at; members that
    /// started before our leader cannot be ours either.
    pub fn members(&self) -> Vec<u32> {
        let mut found = BTreeSet::new();
        if let Some(cgroup) = &self.cgroup {
            found.extend(cgroup_procs(cgroup));
        }
        let foreign_leader = read_stat(self.pgid)
            .is_some_and(|leader| leader.start_time != self.leader_start_time && !leader.is_zombie());
        if !foreign_leader {
            found.extend(
                all_processes()
                    .into_iter()
                    .filter(|p| p.pgid == self.pgid && p.start_time >= self.leader_start_time)
                    .map(|p| p.pid),
            );
        }
        found.into_iter().collect()
    }

    /// Sends `signal` to the whole group (and to every process of the cgroup, which
    /// catches a worker that left the group with `setsid`). A group that is already gone
    /// is not an error.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let foreign_leader = read_stat(self.pgid)
            .is_some_and(|leader| leader.start_time != self.leader_start_time && !leader.is_zombie());
        if !foreign_leader {
            signal_group(self.pgid, signal)?;
        }
        if let Some(cgroup) = &self.cgroup {
            if signal == Signal::SIGKILL {
                cgroup_kill(cgroup);
            } else {
                for pid in cgroup_procs(cgroup) {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sends `signal` to process group `pgid`; a group that no longer exists is fine.
pub fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    let pgid = i32::try_from(pgid).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pgid out of range"))?;
    // Group 0 or 1 would be our own group or init's: never signal those.
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal process group 0 or 1",
        ));
    }
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// How a process ended, as operators read it: `exit code N` or `killed by signal N`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended (status unknown)".to_string(),
    }
}

/// Splits a configured command (`/opt/sglang/bin/python -m sglang.launch_server`) into
/// program and arguments: words are separated by whitespace; single quotes, double quotes
/// and backslashes quote as in a shell (no expansion of any kind).
pub fn split_command(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                word.push(escaped);
                            }
                        }
                        q => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(escaped) = chars.next() {
                    word.push(escaped);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// What to start.
#[derive(Debug)]
pub struct SpawnRequest<'a> {
    /// Program.
    pub program: &'a str,
    /// Arguments.
    pub args: &'a [String],
    /// Environment added to the agent's (minus [`SCRUBBED_ENV`]), in order: later wins.
    pub env: &'a [(String, String)],
    /// Working directory.
    pub cwd: &'a Path,
    /// Standard output, appended.
    pub stdout: &'a Path,
    /// Standard error, appended.
    pub stderr: &'a Path,
    /// The cgroup to start in, when cgroups are used.
    pub cgroup: Option<&'a Path>,
}

/// Starts a runtime as the leader of a new process group, stdin from `/dev/null`, stdout
/// and stderr appended to files. The child is not killed when the handle is dropped.
///
/// With a cgroup, the child is started as `sh -c 'echo $$ > CGROUP/cgroup.procs; exec
/// PROGRAM ARGS'`: it joins its cgroup before the runtime runs, so no process the runtime
/// forks can be born outside it (the pid stays the same through the `exec`). A program
/// that cannot be started then shows as exit code 127 with the shell's message in
/// `stderr.log`.
pub fn spawn(request: &SpawnRequest<'_>) -> io::Result<tokio::process::Child> {
    let stdout = open_append(request.stdout)?;
    let stderr = open_append(request.stderr)?;
    let mut command = match request.cgroup {
        Some(cgroup) => {
            let mut command = tokio::process::Command::new("/bin/sh");
            command
                .arg("-c")
                .arg("echo $$ > \"$0\"; exec \"$@\"")
                .arg(cgroup.join("cgroup.procs"))
                .arg(request.program);
            command
        }
        None => tokio::process::Command::new(request.program),
    };
    command
        .args(request.args)
        .current_dir(request.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    command.envs(request.env.iter().map(|(k, v)| (k, v)));
    command.spawn()
}

/// Opens a log file for appending (created 0640 if missing).
pub fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// Appends one line to a log file (the run marker).
pub fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let mut file = open_append(path)?;
    writeln!(file, "{line}")
}

/// Rotates `path` when it is larger than `max_bytes`: `.1` becomes `.2`, the file is
/// copied to `.1` and truncated in place (copy-truncate), because the runtime keeps its
/// descriptor open in append mode and cannot be asked to reopen. What the runtime writes
/// between the copy and the truncation is lost; the check is periodic, so a file can grow
/// past the limit by what is written in one period. Returns whether it rotated.
pub fn rotate(path: &Path, max_bytes: u64) -> io::Result<bool> {
    let size = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max_bytes {
        return Ok(false);
    }
    let first = suffixed(path, ".1");
    let second = suffixed(path, ".2");
    match fs::rename(&first, &second) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::copy(path, &first)?;
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// The last `count` lines of a log file written after the last [`RUN_MARKER`] (at most
/// the last 64 KiB are read). A missing file has no lines.
pub fn tail(path: &Path, count: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let Ok(size) = file.metadata().map(|m| m.len()) else {
        return Vec::new();
    };
    let start = size.saturating_sub(WINDOW);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line read is probably cut in the middle.
        lines.remove(0);
    }
    if let Some(marker) = lines.iter().rposition(|l| l.starts_with(RUN_MARKER)) {
        lines.drain(..=marker);
    }
    let skip = lines.len().saturating_sub(count);
    lines[skip..].iter().map(|l| clip(l, MAX_TAIL_LINE)).collect()
}

/// Longest log-tail line kept (a status report travels in one frame of at most 1 MiB).
pub const MAX_TAIL_LINE: usize = 1000;

fn clip(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

/// Picks `count` ports from `range` that no replica holds (`taken`) and that can be bound
/// on `host` right now, starting after `cursor` so a port just given up is not reused at
/// once. A runtime could still lose a port to another process between this check and its
/// own bind; it then fails to start and is restarted with other ports.
pub fn reserve_ports(
    host: IpAddr,
    range: (u16, u16),
    count: usize,
    taken: &BTreeSet<u16>,
    cursor: &mut u16,
) -> Option<Vec<u16>> {
    let (first, last) = range;
    if first > last || count == 0 {
        return (count == 0).then(Vec::new);
    }
    let size = u32::from(last - first) + 1;
    let mut chosen = Vec::with_capacity(count);
    let start = u32::from(cursor.saturating_sub(first).min(last - first));
    for step in 1..=size {
        let port = first + ((start + step) % size) as u16;
        if taken.contains(&port) || chosen.contains(&port) {
            continue;
        }
        if TcpListener::bind(SocketAddr::new(host, port)).is_ok() {
            chosen.push(port);
            if chosen.len() == count {
                *cursor = port;
                return Some(chosen);
            }
        }
    }
    None
}

/// cgroup v2 placement of replicas: `<agent cgroup>/pyxis-replicas/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    /// The `pyxis-replicas` directory.
    pub base: PathBuf,
}

impl Cgroups {
    /// Uses cgroup v2 when the unified hierarchy is mounted at `root` (it has
    /// `cgroup.controllers`), the agent's own cgroup (from `self_cgroup`, the text of
    /// `/proc/self/cgroup`) is writable and a `pyxis-replicas` child can be created in it
    /// (systemd's `Delegate=yes`). Otherwise says why not.
    pub fn detect(root: &Path, self_cgroup: &str) -> Result<Self, String> {
        if !root.join("cgroup.controllers").exists() {
            return Err(format!("{} is not a cgroup v2 (unified) hierarchy", root.display()));
        }
        let own = self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| "the agent is in no cgroup v2 (no `0::` line in /proc/self/cgroup)".to_string())?;
        let own_dir = root.join(own.trim().trim_start_matches('/'));
        if nix::unistd::access(&own_dir, nix::unistd::AccessFlags::W_OK).is_err() {
            return Err(format!(
                "the agent's cgroup {} is not writable (no delegated subtree)",
                own_dir.display()
            ));
        }
        let base = own_dir.join("pyxis-replicas");
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", base.display())),
        }
        if nix::unistd::access(&base.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK).is_err() {
            return Err(format!("{} is not a usable cgroup", base.display()));
        }
        Ok(Self { base })
    }

    /// The cgroup of replica `name`, created if missing. Processes found in it belong to
    /// an earlier run of that replica that the ledger does not know (the agent died right
    /// after spawning): they are killed first.
    pub fn prepare(&self, name: &str) -> io::Result<PathBuf> {
        let dir = self.base.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !cgroup_procs(&dir).is_empty() {
                    tracing::warn!(cgroup = %dir.display(), "killing processes left in a replica's cgroup by an earlier run");
                    cgroup_kill(&dir);
                }
            }
            Err(e) => return Err(e),
        }
        Ok(dir)
    }
}

/// Moves `pid` into the cgroup `dir` (the agent does it right after a spawn, in case the
/// child could not move itself; see [`spawn`]).
pub fn cgroup_add(dir: &Path, pid: u32) -> io::Result<()> {
    fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// The processes in cgroup `dir` (none when it does not exist).
pub fn cgroup_procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in cgroup `dir`: `cgroup.kill` (Linux 5.14+), else SIGKILL to each.
pub fn cgroup_kill(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in cgroup_procs(dir) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Removes an empty cgroup directory (best effort).
pub fn cgroup_remove(dir: &Path) {
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                pgid: 4242,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        let own = read_stat(std::process::id()).unwrap();
        assert_eq!(own.pid, std::process::id());
        assert!(is_running(own.pid, own.start_time));
        assert!(!is_running(own.pid, own.start_time + 1));
    }

    #[test]
    fn commands_split_like_a_shell_without_expansion() {
        for (given, expected) in [
            ("vllm", vec!["vllm"]),
            (
                "  /opt/python -m  sglang.launch_server ",
                vec!["/opt/python", "-m", "sglang.launch_server"],
            ),
            (
                "mock --flavor 'v llm' \"a \\\"b\\\"\"",
                vec!["mock", "--flavor", "v llm", "a \"b\""],
            ),
            ("a\\ b ''", vec!["a b", ""]),
            ("$HOME", vec!["$HOME"]),
        ] {
            assert_eq!(split_command(given), expected, "{given}");
        }
        assert!(split_command("   ").is_empty());
    }

    #[test]
    fn tails_show_the_last_run_only_and_rotation_keeps_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        append_line(&log, "old run").unwrap();
        append_line(&log, &format!("{RUN_MARKER} 2")).unwrap();
        for i in 0..30 {
            append_line(&log, &format!("line {i}")).unwrap();
        }
        let tail = tail(&log, 20);
        assert_eq!(tail.len(), 20);
        assert_eq!(tail[0], "line 10");
        assert_eq!(tail[19], "line 29");
        assert!(super::tail(&dir.path().join("missing"), 5).is_empty());
        append_line(&log, &"é".repeat(MAX_TAIL_LINE)).unwrap();
        let long = super::tail(&log, 1).remove(0);
        assert!(
            long.len() <= MAX_TAIL_LINE + 3 && long.ends_with("..."),
            "{}",
            long.len()
        );

        assert!(!rotate(&log, 1 << 20).unwrap());
        assert!(rotate(&log, 10).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        append_line(&log, "after").unwrap();
        assert!(rotate(&log, 1).unwrap());
        assert_eq!(fs::read_to_string(dir.path().join("stderr.log.1")).unwrap(), "after\n");
        assert!(fs::read_to_string(dir.path().join("stderr.log.2"))
            .unwrap()
            .contains("line 29"));
    }

    #[test]
    fn ports_are_free_distinct_and_rotate() {
        let host: IpAddr = "127.0.0.1".parse().unwrap();
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let range = (busy_port, busy_port.saturating_add(3));
        let mut cursor = busy_port;
        let taken = BTreeSet::from([busy_port.saturating_add(1)]);
        let got = reserve_ports(host, range, 2, &taken, &mut cursor).unwrap();
        assert_eq!(got.len(), 2);
        assert!(
            !got.contains(&busy_port) && !got.iter().any(|p| taken.contains(p)),
            "{got:?}"
        );
        assert!(reserve_ports(host, range, 4, &taken, &mut cursor).is_none());
        assert_eq!(reserve_ports(host, range, 0, &taken, &mut cursor), Some(vec![]));
    }

    #[test]
    fn cgroup_detection_explains_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cgroups::detect(dir.path(), "0::/\n").unwrap_err();
        assert!(err.contains("not a cgroup v2"), "{err}");
        fs::write(dir.path().join("cgroup.controllers"), "cpu memory").unwrap();
        let err = Cgroups::detect(dir.path(), "1:name=systemd:/\n").unwrap_err();
        assert!(err.contains("no cgroup v2"), "{err}");
    }

    #[test]
    fn exits_are_described_for_operators() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
