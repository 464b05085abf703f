//! The driver: the one task that owns a node's [`Engine`], executes its commands against the
//! store and the agent host, and feeds their results back.
//!
//! Store operations run on tasks of their own, so a slow claim never delays a renewal; each
//! answer comes back through the driver's inbox as the [`Input`] the engine expects. Nothing
//! here decides anything: every branch is "do what the command says".

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::engine::{Command, Engine, Input, LocalMs, Snapshot};
use crate::core::ids::PartitionId;
use crate::env::Clock;
use crate::faults::Faults;
use crate::host::Host;
use crate::store::{Directory, SharedStore, StoreError};
use crate::telemetry::Telemetry;

/// Called after every engine step (simulations check invariants here).
pub trait StepObserver: Send + Sync + 'static {
    /// The engine of node `name` just took a step at local time `now`.
    fn after_step(&self, name: &str, engine: &Engine, now: LocalMs);
}

/// How others reach the driver: results through the inbox, hints coalesced.
#[derive(Clone)]
pub(crate) struct DriverHandle {
    inbox: mpsc::UnboundedSender<Input>,
    hints: Arc<Hints>,
}

#[derive(Default)]
struct Hints {
    stale: AtomicBool,
    wanted: Mutex<BTreeSet<PartitionId>>,
    wake: Notify,
}

impl DriverHandle {
    /// The view may be stale: read the store soon. Coalesced.
    pub(crate) fn stale(&self) {
        self.hints.stale.store(true, Ordering::Release);
        self.hints.wake.notify_one();
    }

    /// A call for `p` reached this node, which does not hold it. Coalesced.
    pub(crate) fn want(&self, p: PartitionId) {
        self.hints.wanted.lock().insert(p);
        self.hints.wake.notify_one();
    }

    /// Starts the graceful shutdown.
    pub(crate) fn shutdown(&self) {
        let _ = self.inbox.send(Input::Shutdown);
    }
}

/// Everything the driver task needs.
pub(crate) struct Driver {
    pub(crate) engine: Engine,
    pub(crate) store: SharedStore,
    pub(crate) host: Arc<Host>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) observer: Option<Arc<dyn StepObserver>>,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Set to true once the engine stopped (graceful shutdown finished).
    pub(crate) stopped: watch::Sender<bool>,
    /// The directory as last read, patched by incremental reads.
    pub(crate) directory: Arc<DirectoryCache>,
    /// The lease TTL (to tell a live holder of this node's name from a dead predecessor).
    pub(crate) lease_ttl_ms: u64,
}

/// The directory as of the last read and the store's version of it: a refresh reads only
/// the rows changed since (`Store::directory_changes`).
#[derive(Debug, Default)]
pub(crate) struct DirectoryCache {
    state: Mutex<(Option<u64>, Directory)>,
}

impl DirectoryCache {
    /// Reads what changed since the cached version and returns the whole directory.
    async fn refresh(
        &self,
        store: &SharedStore,
        telemetry: &Telemetry,
    ) -> Result<Directory, StoreError> {
        let since = self.state.lock().0;
        let changes = store.directory_changes(since).await?;
        telemetry
            .directory_rows_read
            .inc_by(changes.rows.len() as u64);
        let mut state = self.state.lock();
        // Two refreshes never overlap (one read in flight), but never let an older answer
        // overwrite a newer one.
        let newer = match (state.0, changes.version) {
            (Some(have), Some(got)) => got >= have,
            _ => true,
        };
        if newer {
            state.0 = changes.version;
            state.1.apply(changes);
        }
        Ok(state.1.clone())
    }
}

/// Creates the inbox; the receiver goes to [`Driver::run`].
pub(crate) fn channel() -> (DriverHandle, mpsc::UnboundedReceiver<Input>) {
    let (inbox, rx) = mpsc::unbounded_channel();
    (
        DriverHandle {
            inbox,
            hints: Arc::default(),
        },
        rx,
    )
}

impl Driver {
    /// Runs the engine until it stops or `shutdown` is cancelled. The outcome of the first
    /// join goes to `first_join` (so that `Node::start` can fail on it).
    pub(crate) async fn run(
        mut self,
        handle: DriverHandle,
        mut rx: mpsc::UnboundedReceiver<Input>,
        mut first_join: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) {
        let mut watch = self.store.watch();
        let mut out = Vec::new();
        // The first join: when another incarnation holds the name, the local time its lease
        // was first seen to end. A dead predecessor's end stays put; a live node's moves on.
        let mut name_held_until: Option<LocalMs> = None;
        self.step(Input::Tick, &mut out);
        loop {
            for command in out.drain(..) {
                self.execute(command, &handle);
            }
            if self.engine.is_stopped() {
                self.stopped.send_replace(true);
                return;
            }
            let wake = self.engine.next_wake();
            let sleep = match wake {
                Some(at) => self.clock.sleep_until(at),
                None => Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            };
            let input = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                input = rx.recv() => match input {
                    Some(input) => input,
                    None => return,
                },
                () = handle.hints.wake.notified() => {
                    self.take_hints(&handle, &mut out);
                    Input::Tick
                }
                () = async {
                    match watch.as_mut() {
                        Some(rx) => { let _ = rx.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    if let Some(rx) = watch.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                    Input::Stale
                }
                () = sleep => Input::Tick,
            };
            if let (true, Input::Joined { result, .. }) = (first_join.is_some(), &input) {
                match result {
                    Err(e @ StoreError::NameInUse { remaining_ms, .. }) => {
                        let until = self.clock.now() + (*remaining_ms).max(0) as u64;
                        match name_held_until {
                            None => name_held_until = Some(until),
                            // Renewed since the first answer: a live node holds the name.
                            Some(first) if until > first + self.lease_ttl_ms / 2 => {
                                let _ = first_join.take().map(|tx| tx.send(Err(e.clone())));
                                return;
                            }
                            Some(_) => {}
                        }
                    }
                    Ok(_) => {
                        let _ = first_join.take().map(|tx| tx.send(Ok(())));
                    }
                    Err(e) => {
                        let _ = first_join.take().map(|tx| tx.send(Err(e.clone())));
                        return;
                    }
                }
            }
            self.faults.gate().await;
            if self.shutdown.is_cancelled() {
                return;
            }
            self.step(input, &mut out);
        }
    }

    fn take_hints(&mut self, handle: &DriverHandle, out: &mut Vec<Command>) {
        if handle.hints.stale.swap(false, Ordering::AcqRel) {
            self.step(Input::Stale, out);
        }
        let wanted = std::mem::take(&mut *handle.hints.wanted.lock());
        for p in wanted {
            self.step(Input::Wanted(p), out);
        }
    }

    fn step(&mut self, input: Input, out: &mut Vec<Command>) {
        let now = self.clock.now();
        let read = match &input {
            Input::Read { result, .. } => Some(result.is_ok()),
            _ => None,
        };
        self.engine.step(input, now, out);
        if let Some(ok) = read {
            let t = &self.telemetry;
            t.last_read_answer_ms.store(now.max(1), Ordering::Relaxed);
            if ok {
                t.last_read_ok_ms.store(now.max(1), Ordering::Relaxed);
                let orphaned = self.engine.published().with_view(|view| {
                    view.owners()
                        .iter()
                        .filter(|(o, _)| !o.as_ref().is_some_and(|o| view.is_live(o, now)))
                        .count()
                });
                t.partitions_orphaned.set(orphaned as i64);
            }
        }
        if let Some(observer) = &self.observer {
            observer.after_step(&self.engine.config().name, &self.engine, now);
        }
        let table = &self.engine.published().table;
        let valid = table.lease_valid_at(now);
        self.telemetry.lease_ok.set(i64::from(valid));
        self.telemetry.last_step_ms.store(now, Ordering::Relaxed);
        let since = &self.telemetry.lease_invalid_since_ms;
        if valid {
            since.store(0, Ordering::Relaxed);
        } else if since.load(Ordering::Relaxed) == 0 {
            since.store(now.max(1), Ordering::Relaxed);
        }
        self.telemetry.partitions_owned.set(table.count() as i64);
    }

    /// Executes one command; store and host work runs on its own task and answers through
    /// the inbox.
    fn execute(&self, command: Command, handle: &DriverHandle) {
        let store = self.store.clone();
        let inbox = handle.inbox.clone();
        let reply = move |input: Input| {
            // A closed inbox means the driver is gone; nobody needs the answer.
            let _ = inbox.send(input);
        };
        match command {
            Command::Join {
                record,
                ttl_ms,
                sent_at,
            } => {
                self.tasks.spawn(async move {
                    let result = store.join(&record, ttl_ms).await;
                    reply(Input::Joined {
                        node: record.id,
                        sent_at,
                        result,
                    });
                });
            }
            Command::Renew {
                node,
                ttl_ms,
                sent_at,
                budget_ms,
            } => {
                self.tasks.spawn(async move {
                    let budget = Duration::from_millis(budget_ms);
                    let result = match tokio::time::timeout(budget, store.renew(&node, ttl_ms))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(StoreError::Unavailable("lease renewal timed out".into())),
                    };
                    reply(Input::Renewed {
                        node,
                        sent_at,
                        result,
                    });
                });
            }
            Command::Read { sent_at } => {
                let cache = self.directory.clone();
                let telemetry = self.telemetry.clone();
                self.tasks.spawn(async move {
                    let result = read(&store, &cache, &telemetry).await;
                    reply(Input::Read { sent_at, result });
                });
            }
            Command::Claim { node, partitions } => {
                self.tasks.spawn(async move {
                    let result = store.claim(&node, &partitions).await;
                    reply(Input::Claimed {
                        node,
                        partitions,
                        result,
                    });
                });
            }
            Command::Release { node, moves } => {
                self.tasks.spawn(async move {
                    let list: Vec<_> = moves.iter().map(|m| (m.partition, m.epoch)).collect();
                    let result = store.release(&node, &list).await;
                    reply(Input::Released {
                        node,
                        moves,
                        result,
                    });
                });
            }
            Command::Handoff(moves) => {
                let host = self.host.clone();
                self.tasks.spawn(async move {
                    let moves = host.handoff(moves).await;
                    reply(Input::Flushed { moves });
                });
            }
            Command::Leave(node) => {
                self.tasks.spawn(async move {
                    let result = store.leave(&node).await;
                    reply(Input::Left { result });
                });
            }
            Command::Drop(lost) => self.host.drop_partitions(&lost),
            Command::DropAll => {
                self.host.drop_all();
            }
            Command::Emit(event) => self.telemetry.emit(event),
            Command::Stopped => {}
        }
    }
}

/// One refresh: membership and the operator settings, then the directory.
async fn read(
    store: &SharedStore,
    cache: &DirectoryCache,
    telemetry: &Telemetry,
) -> Result<Snapshot, StoreError> {
    let membership = store.nodes().await?;
    let settings = store.settings().await?;
    let directory = cache.refresh(store, telemetry).await?;
    Ok(Snapshot {
        membership,
        directory,
        settings,
    })
}
