//! Process plumbing shared by the daemons: logging, systemd notification, signals.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exit code for a bad configuration (sysexits `EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Installs the tracing subscriber: `RUST_LOG` or `info`, to stderr.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    // Colour only for a person at a terminal: journald, files and pipes get plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Tells systemd (when run under `Type=notify`) that the daemon is ready, and keeps the
/// watchdog fed at half its interval until `shutdown`. Outside systemd this does nothing.
pub fn notify_ready(status: &str, shutdown: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let period = (interval / 2).max(Duration::from_millis(100));
        tracing::info!(?period, "feeding the systemd watchdog");
        // A plain thread: the notification send is a blocking datagram write, which must
        // never stall the async runtime if the receiver is slow.
        let spawned = std::thread::Builder::new().name("watchdog".into()).spawn(move || {
            while !shutdown.is_cancelled() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                std::thread::sleep(period);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the watchdog thread");
        }
    }
}

/// Tells systemd the daemon is stopping.
pub fn notify_stopping() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
}

/// SIGTERM and SIGINT handlers, installed as the very first thing a daemon does, so that a
/// signal arriving during start-up is a graceful stop and not the default (death).
#[derive(Debug)]
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers (inside the async runtime).
    pub fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn next(&mut self) -> &'static str {
        let term = async {
            match self.term.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let int = async {
            match self.int.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => "SIGTERM",
            _ = int => "SIGINT",
        }
    }

    /// Resolves on the first SIGTERM or SIGINT. A second signal exits the process at once.
    pub async fn wait(mut self) {
        let name = self.next().await;
        tracing::info!(
            signal = name,
            "shutting down gracefully; send another signal to stop at once"
        );
        tokio::spawn(async move {
            self.next().await;
            tracing::warn!("second signal: exiting immediately");
            std::process::exit(130);
        });
    }
}
