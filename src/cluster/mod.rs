//! Several tickd on one PostgreSQL (`[cluster]`): each fire of a cluster job runs on one node.
//!
//! One node owns the cluster at a time, fenced by an epoch and a window of time the database
//! has confirmed to it (`lease`): the owner fires the slots inside its window, with no database
//! round trip in front of a fire, and renews the window a few times a second; a follower takes
//! over only once the owner's renewals have stopped, in one conditional statement that exactly
//! one follower can win, and its window starts where the old one ended. So two epochs' windows
//! never overlap and a slot (a fire's scheduled time, the same on every node) is fired by at most
//! one node: a mistaken takeover costs a gap, never a duplicate. Decisions use the database's
//! `now()`, never the nodes' clocks; a node's own expiry of its window is measured on
//! `CLOCK_BOOTTIME`, which a suspend cannot stop.
//!
//! The engine does not change shape: a job task asks [`Cluster::may_fire`] before a fire of a
//! `scope = "cluster"` job, and nothing else knows the cluster exists.

mod lease;
mod marks;
mod schema;
mod shards;
#[cfg(test)]
mod simulation;
pub(crate) mod tls;

pub use marks::keeps_mark;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Now, RemoteClock};
use crate::config::{ClusterSettings, Config, JobSpec, Scope};

/// This node's part in a cluster: what job tasks ask before they fire. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
    /// This node's name, shared with every run it fires (`TICKD_NODE`).
    node: Arc<str>,
}

#[derive(Debug)]
struct Shared {
    settings: ClusterSettings,
    jobs: Mutex<Jobs>,
    /// Told when the jobs change (a reload).
    jobs_changed: tokio::sync::Notify,
    state: Mutex<State>,
    /// The catch-ups this node runs after a takeover, for the supervisor to hand to the jobs.
    catch_ups: tokio::sync::mpsc::UnboundedSender<CatchUp>,
    catch_up_receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<CatchUp>>>,
    /// Cancelled when this node leaves (shutdown): it releases its ownership, if it has it.
    leave: CancellationToken,
    /// Cancelled once the lease task has ended (after a leave: once its shards are released, or
    /// releasing them failed).
    left: CancellationToken,
    /// The database's clock, estimated from the statements' answers: the time the slots are
    /// named and fired in.
    time: RemoteClock,
    /// The latest slot of each `on_node_loss = "rerun"` job whose run finished (or that the job
    /// skipped), not yet recorded in the database: sent with the next renewal.
    settled: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// The cluster jobs, as the lease and the marks need them.
#[derive(Debug)]
struct Jobs {
    /// The hash of the cluster jobs' definitions: a node only takes ownership from a node with
    /// the same jobs.
    hash: String,
    /// Every job (the agenda picks the ones that keep a mark).
    specs: Vec<Arc<JobSpec>>,
    /// The jobs that keep a mark (see `marks`).
    marked: HashSet<String>,
    /// Each cluster job's shard.
    shard_of: HashMap<String, u32>,
    /// How many cluster jobs each shard holds, and how many fires a second they make.
    load: Vec<ShardLoad>,
}

/// What one shard carries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ShardLoad {
    jobs: usize,
    fires_per_second: f64,
}

impl Jobs {
    fn of(config: &Config) -> Self {
        let specs: Vec<Arc<JobSpec>> = config.jobs().values().cloned().collect();
        let marked = specs
            .iter()
            .filter(|spec| marks::keeps_mark(spec))
            .map(|spec| spec.name().to_owned())
            .collect();
        let shards = config.cluster().map_or(1, ClusterSettings::shards);
        let mut load = vec![ShardLoad::default(); usize::try_from(shards).unwrap_or(1)];
        let mut shard_of = HashMap::new();
        for spec in specs.iter().filter(|s| s.scope() == Scope::Cluster) {
            let shard = shards::shard_of(spec.name(), shards);
            shard_of.insert(spec.name().to_owned(), shard);
            if let Some(load) = load.get_mut(usize::try_from(shard).unwrap_or(0)) {
                load.jobs += 1;
                load.fires_per_second += fires_per_second(spec);
            }
        }
        Jobs {
            hash: jobs_hash(config),
            specs,
            marked,
            shard_of,
            load,
        }
    }
}

/// About how many times a second `spec` fires (a cron expression: from its next two fires).
fn fires_per_second(spec: &JobSpec) -> f64 {
    match spec.schedule() {
        crate::schedule::Schedule::Every(every) => 1.0 / every.period.as_secs_f64().max(1e-3),
        crate::schedule::Schedule::Cron(cron) => {
            let first = cron.next_after(DateTime::UNIX_EPOCH);
            let second = first.and_then(|first| cron.next_after(first));
            match (first, second) {
                (Some(a), Some(b)) => {
                    1.0 / (b - a).to_std().unwrap_or_default().as_secs_f64().max(1e-3)
                }
                _ => 0.0,
            }
        }
    }
}

/// A slot the previous owner did not take, for this node to run once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// The job.
    pub job: String,
    /// The slot.
    pub slot: DateTime<Utc>,
    /// The epoch under which it was taken.
    pub epoch: i64,
}

/// What this node knows of its ownership, as of its last statement.
#[derive(Debug, Clone, Default)]
struct State {
    /// The shards this node owns (or released and fires until their windows end), by shard.
    leases: BTreeMap<u32, Lease>,
    /// Who owns which shards, as last read (every few seconds).
    owners: BTreeMap<String, Vec<u32>>,
    /// The database answered the last statement.
    connected: bool,
    /// The round trip of the last statement.
    round_trip: Option<Duration>,
    /// Why this node does not take ownership, when it could otherwise (its jobs differ).
    refusal: Option<String>,
    /// How often this node took ownership.
    takeovers: u64,
    /// Statements that failed or timed out (and connections that could not be made).
    failures: u64,
    /// The latest slot of each marked job this node took.
    taken: HashMap<String, Taken>,
    /// The latest slot of each marked job fired under its shard's current lease: a leaving
    /// owner gives back the slots it took but did not fire.
    fired: HashMap<String, DateTime<Utc>>,
    /// Shards this node released to another node, and shards it took over: handoffs.
    handoffs: u64,
    /// The clock offset to the database last logged.
    offset_told: chrono::Duration,
}

/// A slot of a marked job this node took: the mark, confirmed under `epoch` within that
/// epoch's window, keeps the slot to this node (no other node will run it), so it fires it even
/// if the fire comes after the window ended (a loaded machine, a slot at the end of a released
/// shard's window): up to `catch_up` after it was taken, as late as a catch-up may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Taken {
    slot: DateTime<Utc>,
    epoch: i64,
    /// When it may no longer fire, by this node's `CLOCK_BOOTTIME`.
    until_boot: Duration,
}

/// A window of ownership confirmed by the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    epoch: i64,
    /// The slots this owner may fire: `[window_start, claimed_until)`, in the database's time.
    window_start: DateTime<Utc>,
    claimed_until: DateTime<Utc>,
    /// When the window ends by this node's `CLOCK_BOOTTIME`, measured conservatively from
    /// when the statement that confirmed it was sent.
    ends_at_boot: Duration,
    /// Released to another node: no longer renewed; its slots fire until the window ends.
    released: bool,
}

impl Lease {
    fn admits(&self, slot: DateTime<Utc>, boot_now: Duration) -> bool {
        slot >= self.window_start && slot < self.claimed_until && boot_now < self.ends_at_boot
    }
}

/// A snapshot of this node's cluster state, for the endpoint (`GET /cluster`, `/metrics`,
/// `/healthz`) and `tickd status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// Whether this node owns a shard of the cluster now (with one shard: owns the cluster).
    pub owner: bool,
    /// The highest epoch of the shards this node owns, if it owns any.
    pub epoch: Option<i64>,
    /// How long the shortest confirmed window of its shards has left, in milliseconds.
    pub window_left_ms: Option<u64>,
    /// How many shards the cluster has.
    #[serde(default)]
    pub shards: u32,
    /// The shards this node owns now.
    #[serde(default)]
    pub shards_owned: Vec<u32>,
    /// Shards this node released to another node or took over, since it started.
    #[serde(default)]
    pub handoffs: u64,
    /// Each node that owns shards, as last read from the database (every few seconds), with the
    /// jobs they carry.
    #[serde(default)]
    pub nodes: Vec<NodeLoad>,
    /// Whether the database answered the last statement.
    pub connected: bool,
    /// The round trip of the last statement, in milliseconds.
    pub round_trip_ms: Option<f64>,
    /// Why this node refuses to own (its jobs differ from the owner's).
    pub refusal: Option<String>,
    /// How often this node took ownership since it started.
    pub takeovers: u64,
    /// Statements that failed or timed out, and connections that could not be made.
    pub failures: u64,
    /// The database's clock less this node's, in milliseconds, as estimated from the renewals:
    /// the cluster jobs fire on the database's time whatever this is.
    #[serde(default)]
    pub clock_offset_ms: f64,
}

/// What one node of the cluster carries: its shards, their jobs and fires a second.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeLoad {
    /// The node.
    pub node: String,
    /// The shards it owns.
    pub shards: Vec<u32>,
    /// The cluster jobs in them.
    pub jobs: usize,
    /// About how many fires a second those jobs make.
    pub fires_per_second: f64,
}

/// A clock offset to the database worth telling in the status line: cluster jobs fire on the
/// database's time anyway, but the node's own jobs and logs do not.
const NOTABLE_OFFSET_MS: f64 = 100.0;

impl ClusterStatus {
    /// Why `/healthz` should answer 503 for this node, or `None`: its jobs differ from the
    /// owner's (it will never take over), or the database did not answer its last statement (or
    /// has not been reached yet), so it fires no cluster job once its window ends. A healthy
    /// follower is healthy: not owning is no problem.
    pub fn health_problem(&self) -> Option<String> {
        let mut problems = Vec::new();
        if let Some(refusal) = &self.refusal {
            problems.push(refusal.clone());
        }
        if !self.connected {
            problems.push("cluster database unreachable".to_owned());
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// The one-line summary `tickd status` prints: `cluster: node web-1, owner (epoch 7, window
    /// 0.8s left, renewal 0.4 ms)` or `cluster: node web-2, following`, then `; database
    /// unreachable` and `; jobs differ from the owner's` when so.
    pub fn summary(&self) -> String {
        let mut line = format!("cluster: node {}, ", self.node);
        if self.shards > 1 {
            let mut details = Vec::new();
            if let Some(left) = self.window_left_ms {
                details.push(format!("window {:.1}s left", left as f64 / 1000.0));
            }
            if let Some(rtt) = self.round_trip_ms {
                details.push(format!("renewal {rtt:.1} ms"));
            }
            line.push_str(&format!(
                "owns {} of {} shards",
                self.shards_owned.len(),
                self.shards
            ));
            if !details.is_empty() {
                line.push_str(&format!(" ({})", details.join(", ")));
            }
        } else if self.owner {
            let mut details = Vec::new();
            if let Some(epoch) = self.epoch {
                details.push(format!("epoch {epoch}"));
            }
            if let Some(left) = self.window_left_ms {
                details.push(format!("window {:.1}s left", left as f64 / 1000.0));
            }
            if let Some(rtt) = self.round_trip_ms {
                details.push(format!("renewal {rtt:.1} ms"));
            }
            line.push_str("owner");
            if !details.is_empty() {
                line.push_str(&format!(" ({})", details.join(", ")));
            }
        } else {
            line.push_str("following");
        }
        if !self.connected {
            line.push_str("; database unreachable");
        }
        if self.refusal.is_some() {
            line.push_str("; jobs differ from the owner's");
        }
        if self.clock_offset_ms.abs() >= NOTABLE_OFFSET_MS {
            let (amount, side) = (
                self.clock_offset_ms.abs() / 1000.0,
                if self.clock_offset_ms > 0.0 {
                    "behind"
                } else {
                    "ahead of"
                },
            );
            line.push_str(&format!(
                "; this node's clock is {amount:.1}s {side} the database's"
            ));
        }
        line
    }

    /// One line per node that owns shards, as last read: `  web-1  21 shards  340 jobs  85.0
    /// fires/s`; empty with one shard (the summary says who owns).
    pub fn nodes_table(&self) -> String {
        if self.shards <= 1 {
            return String::new();
        }
        let width = self.nodes.iter().map(|n| n.node.len()).max().unwrap_or(0);
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "  {:width$}  {:>4} shards  {:>6} jobs  {:>8.1} fires/s\n",
                    n.node,
                    n.shards.len(),
                    n.jobs,
                    n.fires_per_second
                )
            })
            .collect()
    }
}

impl Cluster {
    /// Joins the cluster of `config` (which must have `[cluster]`): keeps trying to reach the
    /// database, creates or upgrades the schema, and follows or owns, until `stop`. The database
    /// need not be up: until it is, this node fires no cluster job.
    pub fn join(
        settings: &ClusterSettings,
        config: &Config,
        clock: Clock,
        stop: CancellationToken,
    ) -> Self {
        let shared = Shared::new(settings, config, State::default(), clock.read());
        tokio::spawn(keep_watched(shared.clone(), clock, stop));
        Cluster {
            node: Arc::from(settings.node()),
            shared,
        }
    }

    /// A node of `config`'s cluster that never reaches the database (no task runs for it), its
    /// state set by `set`: for the tests of what reads [`Cluster::status`].
    #[cfg(test)]
    pub(crate) fn unjoined(config: &Config, set: impl FnOnce(&mut ClusterStatus)) -> Self {
        let settings = config.cluster().expect("a [cluster] table").clone();
        let mut wanted = ClusterStatus {
            node: settings.node().to_owned(),
            owner: false,
            epoch: None,
            window_left_ms: None,
            connected: false,
            round_trip_ms: None,
            refusal: None,
            takeovers: 0,
            failures: 0,
            clock_offset_ms: 0.0,
            shards: settings.shards(),
            shards_owned: Vec::new(),
            handoffs: 0,
            nodes: Vec::new(),
        };
        set(&mut wanted);
        let lease = wanted.epoch.map(|epoch| Lease {
            epoch,
            window_start: DateTime::UNIX_EPOCH,
            claimed_until: DateTime::UNIX_EPOCH,
            ends_at_boot: crate::clock::boot_time()
                + Duration::from_millis(wanted.window_left_ms.unwrap_or(0)),
            released: false,
        });
        let state = State {
            leases: lease.into_iter().map(|lease| (0, lease)).collect(),
            connected: wanted.connected,
            round_trip: wanted
                .round_trip_ms
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
            refusal: wanted.refusal,
            takeovers: wanted.takeovers,
            failures: wanted.failures,
            ..State::default()
        };
        Cluster {
            node: Arc::from(settings.node()),
            shared: Shared::new(&settings, config, state, Clock::system().read()),
        }
    }

    /// A node of `config`'s cluster that owns every slot for a day and never reaches the
    /// database, its estimate of the database's clock starting at `clock`'s reading: for the
    /// tests of how cluster jobs fire. (Jobs that keep a mark fire nothing: no slot is taken.)
    #[cfg(test)]
    pub(crate) fn owning_all_slots(config: &Config, clock: &Clock) -> Self {
        let settings = config.cluster().expect("a [cluster] table").clone();
        let lease = Lease {
            epoch: 1,
            window_start: DateTime::<Utc>::MIN_UTC,
            claimed_until: DateTime::<Utc>::MAX_UTC,
            ends_at_boot: crate::clock::boot_time() + Duration::from_secs(86_400),
            released: false,
        };
        let state = State {
            leases: (0..settings.shards()).map(|shard| (shard, lease)).collect(),
            connected: true,
            ..State::default()
        };
        Cluster {
            node: Arc::from(settings.node()),
            shared: Shared::new(&settings, config, state, clock.read()),
        }
    }

    /// The database's clock as this node estimates it: a cluster job plans its fires on it, so
    /// that every node names and fires the same slots at the same moment, whatever its own
    /// clock says.
    pub fn time(&self) -> &RemoteClock {
        &self.shared.time
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// This node's name, to hand to a run without copying it.
    pub fn node_name(&self) -> Arc<str> {
        self.node.clone()
    }

    /// The epoch under which this node may fire `job`'s `slot` (a fire's scheduled time), or
    /// `None` if it may not: it does not own the cluster, the slot is outside its confirmed
    /// window, or (a job of 1 s or slower) this node did not take the slot's mark (see
    /// [`Taken`]).
    pub fn may_fire(&self, job: &str, slot: DateTime<Utc>) -> Option<i64> {
        let (marked, shard) = {
            let jobs = self.shared.lock_jobs();
            (jobs.marked.contains(job), jobs.shard_of.get(job).copied()?)
        };
        let boot_now = crate::clock::boot_time();
        let mut state = self.shared.lock_state();
        if marked {
            let taken = state.taken.get(job).copied();
            let fires = taken.filter(|t| t.slot == slot && boot_now < t.until_boot);
            if fires.is_some() {
                state.fired.insert(job.to_owned(), slot);
            } else if taken.is_some_and(|t| t.slot == slot) {
                tracing::warn!(job, slot = %slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "cluster: this node took the slot but came to fire it more than `catch_up` later; it is lost");
            }
            return fires.map(|t| t.epoch);
        }
        let lease = *state.leases.get(&shard)?;
        let fires = lease.admits(slot, boot_now);
        if !fires {
            tracing::debug!(job, %slot, shard, epoch = lease.epoch, window_start = %lease.window_start, claimed_until = %lease.claimed_until, released = lease.released, "cluster: refused a fire");
        }
        fires.then_some(lease.epoch)
    }

    /// The run of `job` (an `on_node_loss = "rerun"` job) for `slot` finished, or the job let
    /// the slot go (an overlap skip): the next owner need not run it again. Recorded with the
    /// next renewal.
    pub fn run_settled(&self, job: &str, slot: DateTime<Utc>) {
        let mut settled = self.shared.lock_settled();
        let latest = settled.entry(job.to_owned()).or_insert(slot);
        *latest = (*latest).max(slot);
    }

    /// A reload's new jobs: ownership is kept or taken only with the same jobs as the owner's.
    pub fn jobs_changed(&self, config: &Config) {
        *self.shared.lock_jobs() = Jobs::of(config);
        self.shared.jobs_changed.notify_one();
    }

    /// The catch-ups to hand to the jobs (once: the supervisor takes them).
    pub fn take_catch_ups(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<CatchUp>> {
        self.shared
            .catch_up_receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Leaves the cluster (shutdown, once this node has stopped firing): an owner releases its
    /// ownership at once, so that another node takes over at its next renewal instead of
    /// waiting out `dead_after`.
    pub fn leave(&self) {
        self.shared.leave.cancel();
    }

    /// Resolves once this node has left: its shards released (or the release failed). A
    /// process that exits before then leaves its shards to wait out `dead_after`, and the
    /// slots due meanwhile are lost to the handoff.
    pub async fn left(&self) {
        self.shared.left.cancelled().await;
    }

    /// What this node knows of the cluster now.
    pub fn status(&self) -> ClusterStatus {
        let state = self.shared.lock_state();
        let boot_now = crate::clock::boot_time();
        let owned: Vec<(u32, Lease)> = state
            .leases
            .iter()
            .filter(|(_, l)| !l.released && boot_now < l.ends_at_boot)
            .map(|(shard, lease)| (*shard, *lease))
            .collect();
        let nodes = {
            let jobs = self.shared.lock_jobs();
            state
                .owners
                .iter()
                .map(|(node, shards)| {
                    let loads = shards
                        .iter()
                        .filter_map(|s| jobs.load.get(usize::try_from(*s).unwrap_or(usize::MAX)));
                    NodeLoad {
                        node: node.clone(),
                        shards: shards.clone(),
                        jobs: loads.clone().map(|l| l.jobs).sum(),
                        fires_per_second: loads.map(|l| l.fires_per_second).sum(),
                    }
                })
                .collect()
        };
        ClusterStatus {
            node: self.node().to_owned(),
            owner: !owned.is_empty(),
            epoch: owned.iter().map(|(_, l)| l.epoch).max(),
            window_left_ms: owned
                .iter()
                .map(|(_, l)| {
                    u64::try_from(l.ends_at_boot.saturating_sub(boot_now).as_millis()).unwrap_or(0)
                })
                .min(),
            shards: self.shared.settings.shards(),
            shards_owned: owned.iter().map(|(shard, _)| *shard).collect(),
            handoffs: state.handoffs,
            nodes,
            connected: state.connected,
            round_trip_ms: state.round_trip.map(|rtt| rtt.as_secs_f64() * 1000.0),
            refusal: state.refusal.clone(),
            takeovers: state.takeovers,
            failures: state.failures,
            clock_offset_ms: self.shared.time.offset().num_microseconds().unwrap_or(0) as f64
                / 1000.0,
        }
    }
}

/// Runs the lease task, and again if it panics (a bug): meanwhile this node owns nothing and
/// says the database is unreachable, so that it fires no cluster job on a lease nobody renews.
async fn keep_watched(shared: Arc<Shared>, clock: Clock, stop: CancellationToken) {
    let _left = shared.left.clone().drop_guard();
    loop {
        let task = tokio::spawn(lease::keep(shared.clone(), clock.clone(), stop.clone()));
        let Err(err) = task.await else {
            return;
        };
        {
            let mut state = shared.lock_state();
            state.leases.clear();
            state.connected = false;
            state.failures += 1;
        }
        tracing::error!("cluster: the task that keeps the lease failed (a bug: please report it); starting it again: {err}");
        tokio::select! {
            () = stop.cancelled() => return,
            () = clock.sleep(shared.settings.renew()) => {}
        }
    }
}

impl Shared {
    fn new(settings: &ClusterSettings, config: &Config, state: State, now: Now) -> Arc<Self> {
        let (catch_ups, catch_up_receiver) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Shared {
            settings: settings.clone(),
            jobs: Mutex::new(Jobs::of(config)),
            jobs_changed: tokio::sync::Notify::new(),
            state: Mutex::new(state),
            catch_ups,
            catch_up_receiver: Mutex::new(Some(catch_up_receiver)),
            leave: CancellationToken::new(),
            left: CancellationToken::new(),
            time: RemoteClock::like(now),
            settled: Mutex::new(HashMap::new()),
        })
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_settled(&self) -> std::sync::MutexGuard<'_, HashMap<String, DateTime<Utc>>> {
        self.settled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hash of the current jobs (a renewal sends it).
    fn jobs_hash(&self) -> String {
        self.lock_jobs().hash.clone()
    }

    /// Of `due` slots, the ones this node owns now (inside the window of their shard, its lease
    /// not ended), with their shards and epochs.
    fn owned_slots(&self, due: &[(String, DateTime<Utc>)]) -> Vec<marks::Claim> {
        // Never both locks at once in this order: `status` takes the state's, then the jobs'.
        let shards: Vec<Option<u32>> = {
            let jobs = self.lock_jobs();
            due.iter()
                .map(|(job, _)| jobs.shard_of.get(job).copied())
                .collect()
        };
        let state = self.lock_state();
        let boot_now = crate::clock::boot_time();
        due.iter()
            .zip(shards)
            .filter_map(|((job, slot), shard)| {
                let shard = shard?;
                let lease = state.leases.get(&shard)?;
                let inside = *slot >= lease.window_start
                    && *slot < lease.claimed_until
                    && boot_now < lease.ends_at_boot;
                if !inside {
                    tracing::debug!(job, %slot, shard, epoch = lease.epoch, window_start = %lease.window_start, claimed_until = %lease.claimed_until, released = lease.released, "cluster: slot outside the window");
                }
                inside.then(|| (job.clone(), *slot, shard, lease.epoch))
            })
            .collect()
    }

    /// `slots` (with the epochs to take them under) with their jobs' shards.
    fn with_shards(&self, slots: &[(String, DateTime<Utc>, i64)]) -> Vec<marks::Claim> {
        let jobs = self.lock_jobs();
        slots
            .iter()
            .filter_map(|(job, slot, epoch)| {
                let shard = *jobs.shard_of.get(job)?;
                Some((job.clone(), *slot, shard, *epoch))
            })
            .collect()
    }

    /// The agenda of the current jobs' marked slots after `after`.
    fn agenda(&self, after: DateTime<Utc>) -> marks::Agenda {
        marks::Agenda::new(&self.lock_jobs().specs, after)
    }
}

/// The hash of what the nodes must agree on: the cluster jobs' names, schedules, actions and
/// run policies (not what may differ by machine, such as a user's uid).
pub fn jobs_hash(config: &Config) -> String {
    // The shard count too: nodes that put the jobs in different shards must not share them.
    let mut text = format!(
        "shards {}\u{1}",
        config.cluster().map_or(1, ClusterSettings::shards)
    );
    for spec in config.jobs().values() {
        if spec.scope() != Scope::Cluster {
            continue;
        }
        text.push_str(&format!(
            "{}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{1}",
            spec.name(),
            spec.schedule(),
            spec.action(),
            spec.overlap(),
            spec.timeout(),
            spec.retry(),
            spec.jitter(),
            spec.on_node_loss(),
        ));
    }
    format!("{:016x}", crate::schedule::stable_hash(text.bytes()))
}

/// The identity of one fire in the cluster, the same on every node: `job@slot`.
pub fn fire_id(job: &str, slot: DateTime<Utc>) -> String {
    format!(
        "{job}@{}",
        slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_lease_admits_only_its_slots_and_only_until_it_ends() {
        let lease = Lease {
            epoch: 3,
            window_start: at("2026-01-01T00:00:10Z"),
            claimed_until: at("2026-01-01T00:00:11Z"),
            ends_at_boot: Duration::from_secs(100),
            released: false,
        };
        let early = Duration::from_secs(99);
        assert!(lease.admits(at("2026-01-01T00:00:10Z"), early));
        assert!(lease.admits(at("2026-01-01T00:00:10.800Z"), early));
        // The next epoch's window starts at `claimed_until`: not this one's.
        assert!(!lease.admits(at("2026-01-01T00:00:11Z"), early));
        assert!(!lease.admits(at("2026-01-01T00:00:09.999Z"), early));
        // A node that was stopped or suspended past its window fires nothing more.
        assert!(!lease.admits(at("2026-01-01T00:00:10.500Z"), Duration::from_secs(100)));
    }

    fn status() -> ClusterStatus {
        ClusterStatus {
            node: "web-1".to_owned(),
            owner: true,
            epoch: Some(7),
            window_left_ms: Some(812),
            connected: true,
            round_trip_ms: Some(0.43),
            refusal: None,
            takeovers: 1,
            failures: 0,
            clock_offset_ms: 0.2,
            shards: 1,
            shards_owned: vec![0],
            handoffs: 0,
            nodes: Vec::new(),
        }
    }

    #[test]
    fn with_shards_the_status_says_how_many_this_node_owns_and_lists_the_nodes() {
        let sharded = ClusterStatus {
            shards: 64,
            shards_owned: (0..21).collect(),
            nodes: vec![
                NodeLoad {
                    node: "web-1".to_owned(),
                    shards: (0..21).collect(),
                    jobs: 20,
                    fires_per_second: 20.0,
                },
                NodeLoad {
                    node: "web-20".to_owned(),
                    shards: (21..43).collect(),
                    jobs: 19,
                    fires_per_second: 4.5,
                },
            ],
            ..status()
        };
        assert_eq!(
            sharded.summary(),
            "cluster: node web-1, owns 21 of 64 shards (window 0.8s left, renewal 0.4 ms)"
        );
        assert_eq!(
            sharded.nodes_table(),
            "  web-1     21 shards      20 jobs      20.0 fires/s\n  web-20    22 shards      19 jobs       4.5 fires/s\n"
        );
        assert_eq!(status().nodes_table(), "");
    }

    #[test]
    fn the_status_line_says_owner_or_following_and_what_is_wrong() {
        assert_eq!(
            status().summary(),
            "cluster: node web-1, owner (epoch 7, window 0.8s left, renewal 0.4 ms)"
        );
        let skewed = ClusterStatus {
            clock_offset_ms: -3012.0,
            ..status()
        };
        assert_eq!(
            skewed.summary(),
            "cluster: node web-1, owner (epoch 7, window 0.8s left, renewal 0.4 ms); this node's clock is 3.0s ahead of the database's"
        );
        let following = ClusterStatus {
            node: "web-2".to_owned(),
            owner: false,
            epoch: None,
            window_left_ms: None,
            ..status()
        };
        assert_eq!(following.summary(), "cluster: node web-2, following");
        let cut_off = ClusterStatus {
            connected: false,
            ..following.clone()
        };
        assert_eq!(
            cut_off.summary(),
            "cluster: node web-2, following; database unreachable"
        );
        let differing = ClusterStatus {
            refusal: Some("this node's jobs differ from those of the owner (web-1)".to_owned()),
            ..cut_off
        };
        assert_eq!(
            differing.summary(),
            "cluster: node web-2, following; database unreachable; jobs differ from the owner's"
        );
        // An owner whose window ran out (its lease not yet given up) follows.
        let lapsed = ClusterStatus {
            owner: false,
            window_left_ms: Some(0),
            ..status()
        };
        assert_eq!(lapsed.summary(), "cluster: node web-1, following");
    }

    #[test]
    fn health_fails_on_differing_jobs_or_an_unreachable_database_not_on_following() {
        assert_eq!(status().health_problem(), None);
        let following = ClusterStatus {
            owner: false,
            epoch: None,
            window_left_ms: None,
            ..status()
        };
        assert_eq!(following.health_problem(), None);
        let refusal = "this node's jobs differ from those of the owner (web-1)";
        let differing = ClusterStatus {
            refusal: Some(refusal.to_owned()),
            ..following.clone()
        };
        assert_eq!(differing.health_problem().as_deref(), Some(refusal));
        let cut_off = ClusterStatus {
            connected: false,
            ..status()
        };
        assert_eq!(
            cut_off.health_problem().as_deref(),
            Some("cluster database unreachable")
        );
        let both = ClusterStatus {
            connected: false,
            ..differing
        };
        assert_eq!(
            both.health_problem(),
            Some(format!("{refusal}; cluster database unreachable"))
        );
    }

    /// A cluster of one 1 s job (`a`) in which this node has taken `a`'s slot at 10 s under
    /// epoch 4, and whose (released) window, 30 ms past the slot, has just ended.
    fn taken_near_the_end_of_a_released_window() -> (Cluster, DateTime<Utc>) {
        let config = crate::config::parse(
            std::path::Path::new("jobs.toml"),
            "[cluster]\npostgres = \"postgres://db/app\"\nnode = \"n1\"\nshards = 1\n\
             [jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n",
            &crate::Handlers::with_builtins(),
        )
        .expect("valid");
        let cluster = Cluster::owning_all_slots(&config, &Clock::system());
        let slot = at("2026-01-01T00:00:10Z");
        let boot_now = crate::clock::boot_time();
        let mut state = cluster.shared.lock_state();
        let lease = Lease {
            epoch: 4,
            window_start: at("2026-01-01T00:00:09.030Z"),
            claimed_until: at("2026-01-01T00:00:10.030Z"),
            ends_at_boot: boot_now.saturating_sub(Duration::from_millis(10)),
            released: true,
        };
        state.leases.insert(0, lease);
        state.taken.insert(
            "a".to_owned(),
            Taken {
                slot,
                epoch: 4,
                until_boot: boot_now + Duration::from_secs(10),
            },
        );
        drop(state);
        (cluster, slot)
    }

    #[test]
    fn a_taken_slot_fires_even_once_its_window_has_ended() {
        // The fire comes 40 ms late (a loaded machine), after the window of the released shard
        // ended: the mark keeps the slot to this node (the next owner will not run it), so
        // refusing it would lose it.
        let (cluster, slot) = taken_near_the_end_of_a_released_window();
        assert_eq!(cluster.may_fire("a", slot), Some(4));
        // Once, and no other slot.
        assert_eq!(
            cluster.may_fire("a", slot + chrono::Duration::seconds(1)),
            None
        );
    }

    #[test]
    fn a_taken_slot_fires_no_later_than_catch_up_after_it_was_taken() {
        let (cluster, slot) = taken_near_the_end_of_a_released_window();
        cluster
            .shared
            .lock_state()
            .taken
            .get_mut("a")
            .expect("taken")
            .until_boot = crate::clock::boot_time().saturating_sub(Duration::from_millis(1));
        assert_eq!(cluster.may_fire("a", slot), None);
    }

    #[test]
    fn nodes_with_the_same_cluster_jobs_agree_and_node_jobs_do_not_count() {
        let parse = |text: &str| {
            crate::config::parse(
                std::path::Path::new("jobs.toml"),
                text,
                &crate::Handlers::with_builtins(),
            )
            .expect("valid")
        };
        let base = "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n";
        let with_local =
            format!("{base}[jobs.b]\nevery = \"5s\"\nscope = \"node\"\nhandler = \"log\"\n");
        let changed = "[jobs.a]\nevery = \"2s\"\nhandler = \"log\"\n";
        assert_eq!(jobs_hash(&parse(base)), jobs_hash(&parse(&with_local)));
        assert_ne!(jobs_hash(&parse(base)), jobs_hash(&parse(changed)));
        assert_eq!(
            fire_id("a", at("2026-01-01T00:00:10Z")),
            "a@2026-01-01T00:00:10.000Z"
        );
    }
}
