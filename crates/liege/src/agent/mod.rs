//! The agent model: [`Agent`] kinds with typed state, the [`Signal`] they receive, the
//! registry of kinds a node serves, and the built-in [`Counter`].

pub mod calls;
pub(crate) mod checkpoint;
pub mod journal;
pub mod signal;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use journal::Journal;
pub use signal::{Signal, SignalError};

use crate::core::ids::AgentKey;
use crate::error::{AgentError, CallError};

/// Per-signal context handed to a handler.
pub struct Context<'a> {
    key: &'a AgentKey,
    read_only: bool,
    scope: Option<&'a mut calls::CallScope>,
    alarm: crate::store::AlarmUpdate,
    /// The key's journal (kinds with [`Agent::JOURNAL`]): store, committed head, entries of
    /// earlier turns not yet written.
    journal: Option<(
        &'a dyn crate::store::Store,
        crate::core::ids::Rev,
        &'a [Vec<u8>],
    )>,
    /// Entries this turn appended.
    appended: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("key", &self.key)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl<'a> Context<'a> {
    pub(crate) fn new(key: &'a AgentKey, scope: Option<&'a mut calls::CallScope>) -> Self {
        Self {
            key,
            read_only: false,
            scope,
            alarm: crate::store::AlarmUpdate::Keep,
            journal: None,
            appended: Vec::new(),
        }
    }

    /// Gives the turn its key's journal: committed up to `head`, then `pending`.
    pub(crate) fn with_journal(
        mut self,
        store: &'a dyn crate::store::Store,
        head: crate::core::ids::Rev,
        pending: &'a [Vec<u8>],
    ) -> Self {
        self.journal = Some((store, head, pending));
        self
    }

    /// Appends `entry` (as JSON) to the key's journal and returns the revision it gets. It is
    /// written with this turn's checkpoint, in the same fenced transaction, only if the turn
    /// commits: a failed turn appends nothing, and a retried one appends again only if its
    /// first attempt did not commit. Kinds must set [`Agent::JOURNAL`]; otherwise this fails
    /// with `journal_disabled` (and so does the turn, if the handler passes it on with `?`).
    pub fn append<E: Serialize>(&mut self, entry: &E) -> Result<crate::core::ids::Rev, AgentError> {
        let Some((_, head, pending)) = self.journal else {
            return Err(AgentError::new(
                "journal_disabled",
                format!(
                    "kind {:?} has no journal: set `const JOURNAL: bool = true;` in its Agent impl",
                    self.key.kind
                ),
            ));
        };
        let bytes = serde_json::to_vec(entry).map_err(|e| {
            AgentError::new(
                "bad_entry",
                format!("the journal entry does not serialize: {e}"),
            )
        })?;
        self.appended.push(bytes);
        Ok(crate::core::ids::Rev(
            head.0 + (pending.len() + self.appended.len()) as u64,
        ))
    }

    /// The key's journal as this turn sees it (committed entries, then unwritten ones, then
    /// this turn's), or `journal_disabled` for a kind without [`Agent::JOURNAL`].
    pub fn journal(&self) -> Result<Journal<'_>, AgentError> {
        let (store, head, pending) = self.journal.ok_or_else(|| {
            AgentError::new(
                "journal_disabled",
                format!("kind {:?} has no journal", self.key.kind),
            )
        })?;
        Ok(Journal::new(store, self.key, head, pending, &self.appended))
    }

    /// The entries this turn appended, taken by the host.
    pub(crate) fn take_appended(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.appended)
    }

    /// Asks to be woken at `at`: the key's owner runs [`Agent::on_alarm`] as a turn then
    /// (activating the key if needed), on whichever node owns it by then — after a failover
    /// or a restart too. One alarm per key: setting it again moves it. Persisted with this
    /// turn's checkpoint under the same fence, so only if this turn commits (a failed turn's
    /// alarm change is discarded with its state).
    pub fn set_alarm(&mut self, at: std::time::SystemTime) {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.alarm = crate::store::AlarmUpdate::Set(ms);
    }

    /// Removes the key's alarm (if this turn commits).
    pub fn cancel_alarm(&mut self) {
        self.alarm = crate::store::AlarmUpdate::Clear;
    }

    /// The alarm change this turn asks for (`Keep` if none), taken by the host.
    pub(crate) fn alarm_update(&self) -> crate::store::AlarmUpdate {
        self.alarm
    }

    /// An alarm turn starts with its alarm cleared; the handler may set the next one.
    pub(crate) fn clear_fired_alarm(&mut self) {
        self.alarm = crate::store::AlarmUpdate::Clear;
    }

    /// The key of the agent handling the signal.
    pub fn key(&self) -> &AgentKey {
        self.key
    }

    /// Declares that this signal did not change the state: nothing is persisted and the
    /// signal is not recorded for deduplication (re-running a read is harmless).
    pub fn read_only(&mut self) {
        self.read_only = true;
    }

    /// True if the turn declared it changed nothing, changed no alarm and appended nothing.
    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only && self.alarm == crate::store::AlarmUpdate::Keep && self.appended.is_empty()
    }

    /// Calls the agent `id` of kind `B` from inside this turn and waits for its typed reply,
    /// within the deadline of the call this turn serves. This turn keeps its key's turn
    /// while it waits (other signals for this key queue behind it).
    ///
    /// - A call back to a key whose turn is waiting on this call — this key, or any key
    ///   up the chain, on any node — fails at once with the agent error `call_cycle` (it
    ///   could only deadlock). Calls nest at most [`calls::MAX_CALL_DEPTH`] deep.
    /// - The nested signal's id is derived from this turn's key and signal id, the callee and the
    ///   call's position in the turn: if this turn is retried (its checkpoint did not
    ///   commit, the caller retried), the nested call is deduplicated by the callee rather
    ///   than applied twice.
    /// - A `CallError` converts into an [`AgentError`] with its code, so `?` works in a
    ///   handler.
    pub async fn call<B: Agent>(&mut self, id: &str, msg: B::Msg) -> Result<B::Reply, CallError> {
        let key = typed_key::<B>(id)?;
        let signal = typed_signal(&msg)?;
        let scope = self
            .scope
            .as_deref_mut()
            .ok_or_else(|| CallError::Internal("this context cannot make calls".into()))?;
        let outbound = scope
            .outbound
            .clone()
            .ok_or_else(|| CallError::Unavailable("the node is shutting down".into()))?;
        let (signal, timeout) = scope.prepare(&key, signal, crate::host::unix_ms())?;
        let value = outbound.call(key.clone(), signal, timeout).await?;
        typed_value(&key, value)
    }
}

/// The key `id` of kind `A`, or a `BadRequest` saying why it is not one (typed clients).
pub(crate) fn typed_key<A: Agent>(id: &str) -> Result<AgentKey, CallError> {
    AgentKey::new(A::KIND, id).map_err(|e| CallError::BadRequest(e.to_string()))
}

/// The signal carrying a typed message, or a `BadRequest` (typed clients).
pub(crate) fn typed_signal<M: Serialize>(msg: &M) -> Result<Signal, CallError> {
    signal_of(msg).map_err(|e| CallError::BadRequest(e.to_string()))
}

/// A reply (or state) of `key` as the type a typed client expects.
pub(crate) fn typed_value<T: DeserializeOwned>(
    key: &AgentKey,
    value: Value,
) -> Result<T, CallError> {
    serde_json::from_value(value).map_err(|e| {
        CallError::Internal(format!(
            "the answer of {key} does not decode as {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// A kind of keyed singleton agent, with typed messages, replies and state.
///
/// One activation per key exists in the whole cluster; its [`Agent::handle`] runs one message
/// at a time (turn-based), so the handler has `&mut` access to the state without locks.
/// The state is loaded from the key's checkpoint on activation (or `Default` when there is
/// none) and persisted according to the node's persistence mode.
///
/// **Messages are CloudEvents.** [`Agent::Msg`] is a serde enum whose variants are the
/// signal types, tagged the way a CloudEvent carries them — `#[serde(tag = "type", content =
/// "data")]` — so `Inc { by: 2 }` is the event `{"type": "inc", "data": {"by": 2}}` over HTTP
/// and on the wire, and a typed client ([`crate::cluster::Node::agent`]) sends the very same
/// thing. A signal whose type or data does not decode into `Msg` is refused with the agent
/// error `unknown_signal` (or `bad_request`) and changes nothing.
///
/// **A failed turn changes nothing.** If `handle` returns an error, the runtime puts the state
/// back as it was before the turn (the handler's partial changes are discarded), persists
/// nothing and records no dedupe entry; the caller gets the [`AgentError`].
///
/// A message whose checkpoint did not commit is retried by the caller from the last
/// committed state, so `handle` may run more than once for one message; with an
/// idempotency key (a [`Signal`]'s id) its effects apply once.
///
/// ```
/// use liege::{Agent, AgentError, Context};
/// use serde::{Deserialize, Serialize};
///
/// /// A visit counter per page.
/// struct Visits;
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(tag = "type", content = "data", rename_all = "snake_case")]
/// enum VisitsMsg {
///     Visit,
///     Reset { to: u64 },
/// }
///
/// impl Agent for Visits {
///     const KIND: &'static str = "visits";
///     type State = u64;
///     type Msg = VisitsMsg;
///     type Reply = u64;
///
///     async fn handle(
///         &self,
///         state: &mut u64,
///         msg: VisitsMsg,
///         _ctx: &mut Context<'_>,
///     ) -> Result<u64, AgentError> {
///         match msg {
///             VisitsMsg::Visit => *state += 1,
///             VisitsMsg::Reset { to } => *state = to,
///         }
///         Ok(*state)
///     }
/// }
/// ```
pub trait Agent: Send + Sync + 'static {
    /// The kind's name: the `{kind}` of `/v1/agents/{kind}/{id}` and of [`AgentKey`]s
    /// (`[a-z0-9_-]`, 1..=64 bytes).
    const KIND: &'static str;

    /// The agent's state, persisted as JSON. `Clone` so that a failed turn can be undone.
    type State: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static;

    /// The messages it handles: a serde enum tagged `#[serde(tag = "type", content = "data")]`.
    type Msg: Serialize + DeserializeOwned + Send + 'static;

    /// What a handled message answers.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// `true` if the kind uses its keys' journals ([`Context::append`], [`Journal`]): the host
    /// then reads a key's journal head when it activates it (one more store read per
    /// activation). Default `false`.
    const JOURNAL: bool = false;

    /// Runs once when a key is activated, after its state is loaded from its checkpoint (or
    /// `Default`) and before its first turn. An event-sourced agent replays here the journal
    /// entries its snapshot does not cover. An error fails the request that activated the
    /// key and nothing is kept (the next request tries again). The default does nothing.
    fn on_activate(
        &self,
        state: &mut Self::State,
        journal: &Journal<'_>,
    ) -> impl Future<Output = Result<(), AgentError>> + Send {
        let _ = (state, journal);
        async { Ok(()) }
    }

    /// Handles one message, returning the reply or an agent error (which undoes the turn).
    fn handle(
        &self,
        state: &mut Self::State,
        msg: Self::Msg,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<Self::Reply, AgentError>> + Send;

    /// The key's alarm ([`Context::set_alarm`]) is due: a turn like any other, run by the
    /// key's current owner. At least once: an alarm whose turn fails, or whose commit is
    /// lost, fires again (with the same signal id, `alarm-{due ms}`, so a repeat of a
    /// committed one is deduplicated). The alarm is cleared by this turn unless it sets a
    /// new one. The default does nothing.
    fn on_alarm(
        &self,
        state: &mut Self::State,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<(), AgentError>> + Send {
        let _ = (state, ctx);
        async { Ok(()) }
    }
}

/// The signal type of an alarm turn (reserved: the HTTP API refuses it from clients).
pub const ALARM_SIGNAL_TYPE: &str = "liege.alarm";

/// The signal that carries `msg`: its serde tag is the type, its content the data. Fails with
/// `bad_message_type` if the message type is not tagged `#[serde(tag = "type", content =
/// "data")]`.
pub fn signal_of<M: Serialize>(msg: &M) -> Result<Signal, AgentError> {
    let bad = || {
        AgentError::new(
            "bad_message_type",
            format!(
                "{} must serialize as {{\"type\": ..., \"data\": ...}}: \
                 use #[serde(tag = \"type\", content = \"data\")]",
                std::any::type_name::<M>()
            ),
        )
    };
    let mut value = serde_json::to_value(msg).map_err(|_| bad())?;
    let obj = value.as_object_mut().ok_or_else(bad)?;
    let ty = match obj.remove("type") {
        Some(Value::String(t)) => t,
        _ => return Err(bad()),
    };
    let data = obj.remove("data");
    if !obj.is_empty() {
        return Err(bad());
    }
    let signal = Signal::new(ty);
    Ok(match data {
        Some(d) => signal.with_data(d),
        None => signal,
    })
}

/// The message `signal` carries, or the agent error `unknown_signal` (no variant of that
/// type) / `bad_request` (its data does not fit the variant).
pub fn msg_of<M: DeserializeOwned>(signal: &Signal) -> Result<M, AgentError> {
    let tagged = |data: Option<Value>| {
        let mut obj = serde_json::Map::new();
        obj.insert("type".into(), Value::String(signal.ty.clone()));
        if let Some(d) = data {
            obj.insert("data".into(), d);
        }
        serde_json::from_value::<M>(Value::Object(obj))
    };
    let err = match tagged(signal.data.clone()) {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    // No data at all: a variant whose fields all have defaults takes `{}`.
    if signal.data.is_none() {
        if let Ok(m) = tagged(Some(Value::Object(Default::default()))) {
            return Ok(m);
        }
    }
    let why = err.to_string();
    if why.contains("unknown variant") {
        Err(AgentError::new(
            "unknown_signal",
            format!("unknown signal type {:?}: {why}", signal.ty),
        ))
    } else {
        Err(AgentError::new(
            "bad_request",
            format!("bad data for signal {:?}: {why}", signal.ty),
        ))
    }
}

/// Boxed future used by the type-erased agent.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Type-erased state of an activation.
pub(crate) type AnyState = Box<dyn Any + Send + Sync>;

/// [`Agent`] with its types erased, so a node can hold many kinds and route JSON.
pub(crate) trait DynAgent: Send + Sync {
    fn decode(&self, data: Option<&[u8]>) -> Result<AnyState, AgentError>;
    fn encode(&self, state: &AnyState) -> Vec<u8>;
    fn to_json(&self, state: &AnyState) -> Value;
    /// [`Agent::JOURNAL`].
    fn journal(&self) -> bool;
    /// [`Agent::on_activate`].
    fn activate<'a>(
        &'a self,
        state: &'a mut AnyState,
        journal: &'a Journal<'_>,
    ) -> BoxFuture<'a, Result<(), AgentError>>;
    /// Runs one turn; on an error the state is as it was before.
    fn handle<'a>(
        &'a self,
        state: &'a mut AnyState,
        signal: &'a Signal,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Value, AgentError>>;
}

struct Erased<A>(A);

fn typed<A: Agent>(state: &AnyState) -> &A::State {
    state
        .downcast_ref::<A::State>()
        .expect("state was created by this agent's decode")
}

impl<A: Agent> DynAgent for Erased<A> {
    fn decode(&self, data: Option<&[u8]>) -> Result<AnyState, AgentError> {
        let state: A::State = match data {
            None => A::State::default(),
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                AgentError::new("corrupt_state", format!("cannot decode checkpoint: {e}"))
            })?,
        };
        Ok(Box::new(state))
    }

    fn encode(&self, state: &AnyState) -> Vec<u8> {
        serde_json::to_vec(typed::<A>(state)).expect("agent state serializes to JSON")
    }

    fn to_json(&self, state: &AnyState) -> Value {
        serde_json::to_value(typed::<A>(state)).expect("agent state serializes to JSON")
    }

    fn journal(&self) -> bool {
        A::JOURNAL
    }

    fn activate<'a>(
        &'a self,
        state: &'a mut AnyState,
        journal: &'a Journal<'_>,
    ) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(async move {
            let state = state
                .downcast_mut::<A::State>()
                .expect("state was created by this agent's decode");
            self.0.on_activate(state, journal).await
        })
    }

    fn handle<'a>(
        &'a self,
        state: &'a mut AnyState,
        signal: &'a Signal,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Value, AgentError>> {
        Box::pin(async move {
            let alarm = signal.ty == ALARM_SIGNAL_TYPE;
            let msg = if alarm {
                None
            } else {
                Some(msg_of::<A::Msg>(signal)?)
            };
            let state = state
                .downcast_mut::<A::State>()
                .expect("state was created by this agent's decode");
            let before = state.clone();
            let result = match msg {
                None => self.0.on_alarm(state, ctx).await.map(|()| Value::Null),
                Some(msg) => match self.0.handle(state, msg, ctx).await {
                    Ok(reply) => serde_json::to_value(reply).map_err(|e| {
                        AgentError::new("bad_reply", format!("the reply does not serialize: {e}"))
                    }),
                    Err(e) => Err(e),
                },
            };
            if result.is_err() {
                // The runtime, not the handler, guarantees that a failed turn changes nothing.
                *state = before;
            }
            result
        })
    }
}

/// The agent kinds a node serves, by name. Every node of a cluster MUST register the same kinds.
#[derive(Clone, Default)]
pub struct Agents {
    kinds: HashMap<Arc<str>, Arc<dyn DynAgent>>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.kinds.keys()).finish()
    }
}

impl Agents {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry with the built-in kinds: the demo `counter`, and `timer` (a durable
    /// alarm per key, which the drill uses to check that alarms survive its faults).
    pub fn with_builtins() -> Self {
        Self::new()
            .register(Counter)
            .register(Timer)
            .register(Ledger)
    }

    /// Adds the kind [`Agent::KIND`] (replacing one of that name). Panics if the name is not
    /// a valid kind (`[a-z0-9_-]`, 1..=64 bytes): kinds are fixed at build time, so a bad
    /// name is a programming error.
    pub fn register<A: Agent>(mut self, agent: A) -> Self {
        crate::core::ids::validate_kind(A::KIND).expect("agent kind names are [a-z0-9_-]{1,64}");
        self.kinds.insert(A::KIND.into(), Arc::new(Erased(agent)));
        self
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn DynAgent>> {
        self.kinds.get(kind)
    }

    /// True if `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// Names of the registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kinds.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }
}

/// The built-in demo kind: a counter.
///
/// Messages ([`CounterMsg`]): `inc` with optional data `{"by": n}` (default 1) replies
/// `{"value": new}`; `get` replies `{"value": current}`. Anything else is an
/// `unknown_signal` agent error; a sum past 64 bits is `overflow` (and changes nothing).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counter;

/// What a [`Counter`] handles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum CounterMsg {
    /// Add `by` (default 1).
    Inc {
        /// The increment.
        #[serde(default = "one")]
        by: i64,
    },
    /// Read the value.
    Get,
}

fn one() -> i64 {
    1
}

/// A [`Counter`]'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReply {
    /// The value after the message.
    pub value: i64,
}

impl Agent for Counter {
    const KIND: &'static str = "counter";
    type State = i64;
    type Msg = CounterMsg;
    type Reply = CounterReply;

    async fn handle(
        &self,
        state: &mut i64,
        msg: CounterMsg,
        ctx: &mut Context<'_>,
    ) -> Result<CounterReply, AgentError> {
        match msg {
            CounterMsg::Inc { by } => {
                *state = state.checked_add(by).ok_or_else(|| {
                    AgentError::new("overflow", "counter would overflow a 64-bit integer")
                })?;
            }
            CounterMsg::Get => ctx.read_only(),
        }
        Ok(CounterReply { value: *state })
    }
}

/// The built-in kind `timer`: one durable alarm per key, counting how often it fired.
///
/// Messages ([`TimerMsg`]): `arm` with data `{"at_ms": unix_ms}` sets the alarm (replacing an
/// armed one); `get` reads. Every reply is the [`TimerState`]. When the alarm fires, `fired`
/// goes up by one and `armed_for` is cleared. `liege drill` arms some at the start of a run
/// and checks at the end that each fired exactly once, whatever the fault.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timer;

/// What a [`Timer`] handles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum TimerMsg {
    /// Fire at this Unix millisecond.
    Arm {
        /// When.
        at_ms: i64,
    },
    /// Read the state.
    Get,
}

/// A [`Timer`]'s state (and every reply).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerState {
    /// The due time of the armed alarm, if one is armed.
    pub armed_for: Option<i64>,
    /// How many times the alarm fired.
    pub fired: u32,
    /// When it last fired (Unix ms, the firing node's clock).
    pub last_fired_ms: Option<i64>,
}

impl Agent for Timer {
    const KIND: &'static str = "timer";
    type State = TimerState;
    type Msg = TimerMsg;
    type Reply = TimerState;

    async fn handle(
        &self,
        state: &mut TimerState,
        msg: TimerMsg,
        ctx: &mut Context<'_>,
    ) -> Result<TimerState, AgentError> {
        match msg {
            TimerMsg::Arm { at_ms } => {
                let at = u64::try_from(at_ms).map_err(|_| {
                    AgentError::new("bad_request", "at_ms must be a Unix time in milliseconds")
                })?;
                ctx.set_alarm(std::time::UNIX_EPOCH + std::time::Duration::from_millis(at));
                state.armed_for = Some(at_ms);
            }
            TimerMsg::Get => ctx.read_only(),
        }
        Ok(state.clone())
    }

    async fn on_alarm(
        &self,
        state: &mut TimerState,
        _: &mut Context<'_>,
    ) -> Result<(), AgentError> {
        state.fired += 1;
        state.armed_for = None;
        state.last_fired_ms = Some(crate::host::unix_ms());
        Ok(())
    }
}

/// The built-in kind `ledger`: an append-only log per key on the key's journal.
///
/// Messages ([`LedgerMsg`]): `append` with data `{"entry": any JSON}` appends it (the reply's
/// `head` is its revision); `read` with data `{"from": rev, "limit": n}` (defaults 1 and
/// 1,000) returns entries. The state counts the entries its turns appended — written in the
/// same transaction as the entries, so it always equals the journal's head. `liege drill`
/// appends to some ledgers through the fault and checks each holds exactly the acknowledged
/// entries, in order, once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ledger;

/// What a [`Ledger`] handles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum LedgerMsg {
    /// Append one entry.
    Append {
        /// The entry.
        entry: Value,
    },
    /// Read entries.
    Read {
        /// First revision to read (default 1).
        #[serde(default = "first_rev")]
        from: u64,
        /// Most entries to return (default 1,000).
        #[serde(default = "read_limit")]
        limit: u32,
    },
}

fn first_rev() -> u64 {
    1
}

fn read_limit() -> u32 {
    1_000
}

/// A [`Ledger`]'s state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    /// Entries appended by this key's turns (equals the journal's head).
    pub appended: u64,
}

/// A [`Ledger`]'s answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerReply {
    /// The journal's head after the message.
    pub head: u64,
    /// The entries read, `(revision, entry)` in order (empty for `append`).
    #[serde(default)]
    pub entries: Vec<(u64, Value)>,
}

impl Agent for Ledger {
    const KIND: &'static str = "ledger";
    const JOURNAL: bool = true;
    type State = LedgerState;
    type Msg = LedgerMsg;
    type Reply = LedgerReply;

    async fn handle(
        &self,
        state: &mut LedgerState,
        msg: LedgerMsg,
        ctx: &mut Context<'_>,
    ) -> Result<LedgerReply, AgentError> {
        match msg {
            LedgerMsg::Append { entry } => {
                let rev = ctx.append(&entry)?;
                state.appended += 1;
                Ok(LedgerReply {
                    head: rev.0,
                    entries: Vec::new(),
                })
            }
            LedgerMsg::Read { from, limit } => {
                ctx.read_only();
                let journal = ctx.journal()?;
                let entries = journal.read::<Value>(crate::Rev(from), limit).await?;
                Ok(LedgerReply {
                    head: journal.head().0,
                    entries: entries.into_iter().map(|(r, e)| (r.0, e)).collect(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_are_cloudevents_types_with_data() {
        let s = signal_of(&CounterMsg::Inc { by: 2 }).unwrap();
        assert_eq!((s.ty.as_str(), s.data), ("inc", Some(json!({"by": 2}))));
        let s = signal_of(&CounterMsg::Get).unwrap();
        assert_eq!((s.ty.as_str(), s.data), ("get", None));
        assert_eq!(
            msg_of::<CounterMsg>(&Signal::new("inc")),
            Ok(CounterMsg::Inc { by: 1 })
        );
        assert_eq!(
            msg_of::<CounterMsg>(&Signal::new("inc").with_data(json!({"by": 5}))),
            Ok(CounterMsg::Inc { by: 5 })
        );
        assert_eq!(
            msg_of::<CounterMsg>(&Signal::new("dec")).unwrap_err().code,
            "unknown_signal"
        );
        assert_eq!(
            msg_of::<CounterMsg>(&Signal::new("inc").with_data(json!({"by": "x"})))
                .unwrap_err()
                .code,
            "bad_request"
        );
        // An untagged message type is refused with a clear error.
        assert_eq!(signal_of(&5u32).unwrap_err().code, "bad_message_type");
    }
}
