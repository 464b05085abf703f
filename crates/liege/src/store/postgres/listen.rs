//! Push notifications: `LISTEN liege_changes` on a dedicated connection.
//!
//! Claims, releases, joins and leaves `pg_notify('liege_changes', 'directory' | 'membership')`
//! in their transaction; the listener turns each notification into a [`StoreChange`] on a
//! broadcast channel. A dead listener connection is replaced with backoff; after every
//! (re)connect both kinds of change are announced, because notifications sent while the
//! listener was away are lost and watchers must poll once.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_postgres::{AsyncMessage, Config};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use crate::store::StoreChange;

/// The notification channel.
pub(super) const CHANNEL: &str = "liege_changes";

/// How often the listener checks its connection with a trivial query.
const PING_EVERY: Duration = Duration::from_secs(2);

/// The first wait before reconnecting the listener.
const FIRST_RETRY: Duration = Duration::from_millis(50);

/// The longest wait before reconnecting it. Without the listener a node learns changes only
/// by its periodic reads, so after a store outage it should be back within about that.
const LAST_RETRY: Duration = Duration::from_millis(250);

/// The waits between reconnects: doubling from [`FIRST_RETRY`] up to [`LAST_RETRY`], and
/// from the first again after a connection that was listening, so a blip hours after the
/// last one is retried at once, not after the longest wait.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_RETRY }
    }
}

impl Backoff {
    /// The wait after a connection ended that was `listening` (or never got that far).
    fn after(&mut self, listening: bool) -> Duration {
        if listening {
            self.next = FIRST_RETRY;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(LAST_RETRY);
        wait
    }
}

/// Runs the listener until `cancel` fires.
pub(super) async fn run(
    config: Config,
    tls: MakeRustlsConnect,
    timeout: Duration,
    changes: broadcast::Sender<StoreChange>,
    listening: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::default();
    while !cancel.is_cancelled() {
        let wait = tokio::select! {
            () = cancel.cancelled() => return,
            ended = listen_once(&config, tls.clone(), timeout, &changes, &listening) => {
                tracing::debug!(reason = %ended, "postgres listener disconnected; reconnecting");
                backoff.after(listening.send_replace(false))
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One listener connection, until it fails. Returns why it ended.
async fn listen_once(
    config: &Config,
    tls: MakeRustlsConnect,
    timeout: Duration,
    changes: &broadcast::Sender<StoreChange>,
    listening: &watch::Sender<bool>,
) -> String {
    let connected = tokio::time::timeout(timeout, config.connect(tls)).await;
    let (client, mut connection) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return format!("connect: {e}"),
        Err(_) => return "connect timed out".into(),
    };
    let forward = changes.clone();
    let mut driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let change = match n.payload() {
                        "directory" => StoreChange::Directory,
                        _ => StoreChange::Membership,
                    };
                    // No receivers is fine: nobody is watching.
                    let _ = forward.send(change);
                }
                Ok(_) => {}
                Err(e) => return format!("connection: {e}"),
            }
        }
        "connection closed".to_string()
    });
    let listen = format!("LISTEN {CHANNEL}");
    match tokio::time::timeout(timeout, client.batch_execute(&listen)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return format!("listen: {e}"),
        Err(_) => return "listen timed out".into(),
    }
    let _ = changes.send(StoreChange::Membership);
    let _ = changes.send(StoreChange::Directory);
    listening.send_replace(true);
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            ended = &mut driver => {
                return ended.unwrap_or_else(|e| format!("driver task: {e}"));
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timeout, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping: {e}"),
                    Err(_) => return "ping timed out".into(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_double_to_a_cap_and_start_over_after_a_good_connection() {
        let mut b = Backoff::default();
        let ms = |d: Duration| d.as_millis();
        let failing: Vec<u128> = (0..5).map(|_| ms(b.after(false))).collect();
        assert_eq!(failing, [50, 100, 200, 250, 250]);
        assert_eq!(
            ms(b.after(true)),
            50,
            "a connection that listened starts over"
        );
        assert_eq!(ms(b.after(false)), 100);
    }
}
