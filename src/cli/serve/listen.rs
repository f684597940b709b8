//! The connections and the shutdown. Each connection is served by hyper's HTTP/1 with a timer,
//! so that a client that does not finish its request headers within `--read-timeout` is
//! disconnected (`axum::serve` sets no timer: such a client would hold its connection, and a
//! graceful shutdown, forever). SIGINT or SIGTERM stops accepting and lets the connections
//! finish their requests for at most `--shutdown-timeout`; a second signal exits at once.

use anyhow::{Context, Result};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM, caught from before the first connection to the exit.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM; the exit status a shell gives a process killed by
    /// it (130 or 143).
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => 130,
            _ = self.term.recv() => 143,
        }
    }
}

/// Serves `router` on `listener` until SIGINT or SIGTERM, then waits for the open connections
/// to finish their requests for at most `shutdown_timeout`. `Ok(true)`: all of them finished;
/// `Ok(false)`: some were still open at the deadline (dropped with the runtime). A second
/// signal exits the process at once.
pub(super) async fn serve(
    mut listener: TcpListener,
    router: Router,
    read_timeout: Duration,
    shutdown_timeout: Duration,
) -> Result<bool> {
    let mut signals = Signals::new()?;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let connections = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            // axum's accept retries on errors (a full file table: after a second).
            (stream, _) = axum::serve::Listener::accept(&mut listener) => stream,
            _ = signals.next() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let conn = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A connection's errors (a client gone, a header timeout) concern that client only.
            let _ = conn.await;
        });
    }
    drop(listener);
    let open = connections.count();
    crate::errln!(
        "shutting down: finishing the requests in flight ({open} connection{} open; at most {}s, --shutdown-timeout)",
        if open == 1 { "" } else { "s" },
        shutdown_timeout.as_secs()
    );
    tokio::select! {
        _ = connections.shutdown() => Ok(true),
        _ = tokio::time::sleep(shutdown_timeout) => {
            crate::errln!("shutting down: --shutdown-timeout has passed; closing the connections still open");
            Ok(false)
        }
        status = signals.next() => {
            crate::errln!("shutting down: a second signal; exiting now");
            std::process::exit(status)
        }
    }
}
