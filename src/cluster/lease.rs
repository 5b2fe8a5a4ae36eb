//! The ownership protocol, one statement per renewal interval (see the module doc of
//! [`super`]).
//!
//! One row per cluster: `owner`, `epoch`, `window_start`, `claimed_until`, `renewed_at`,
//! `jobs_hash`. The owner renews with an `UPDATE` fenced by its epoch (zero rows: it was
//! deposed). Any other node tries to take over with one `INSERT ... ON CONFLICT DO UPDATE ...
//! WHERE` that succeeds only if the row's renewals stopped `dead_after` ago (or the row is its
//! own, after a restart) and its jobs match; PostgreSQL re-checks the condition on the locked row,
//! so of several followers exactly one wins. The new window starts at the old `claimed_until`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Row, Statement};
use tokio_util::sync::CancellationToken;

use super::marks::{self, Agenda};
use super::schema;
use super::{CatchUp, Lease, Shared};
use crate::clock::{boot_time, Clock};

/// The owner extends its window from the database's `now()`; fenced by owner and epoch.
const RENEW: &str = "UPDATE tickd_owner
    SET claimed_until = greatest(claimed_until, now() + make_interval(secs => $3)),
        renewed_at = now(), jobs_hash = $4
    WHERE cluster = $1 AND owner = $2 AND epoch = $5
    RETURNING epoch, window_start, claimed_until, now()";

/// A node that owns nothing creates the row, or takes it over from an owner whose renewals
/// stopped (a node restarted under its old name waits like any other: a second live process
/// under one name must not take the row back and forth); its window starts where the old one
/// ends. A node whose jobs differ from the owner's takes over only from an owner that released
/// the row or has been silent for three times `dead_after` (nodes with the owner's jobs go first):
/// a rolling deploy that changes the jobs must not leave the cluster with no owner at all. It answers one row whether or not it wins (the epoch `NULL` when not), so that every
/// attempt also reads the database's clock.
const ACQUIRE: &str = "WITH acquired AS (
    INSERT INTO tickd_owner AS o
        (cluster, owner, epoch, window_start, claimed_until, renewed_at, jobs_hash)
    VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3), now(), $4)
    ON CONFLICT (cluster) DO UPDATE SET
        owner = excluded.owner,
        epoch = o.epoch + 1,
        window_start = greatest(o.claimed_until, now()),
        claimed_until = greatest(o.claimed_until, now()) + make_interval(secs => $3),
        renewed_at = now(),
        jobs_hash = excluded.jobs_hash
    WHERE (o.jobs_hash = excluded.jobs_hash OR o.jobs_hash = ''
            OR o.renewed_at < now() - make_interval(secs => $5::float8 * 3))
        AND o.renewed_at < now() - make_interval(secs => $5)
    RETURNING o.epoch, o.window_start, o.claimed_until
    )
    SELECT acquired.epoch, acquired.window_start, acquired.claimed_until, now()
    FROM (SELECT 1) AS one LEFT JOIN acquired ON true";

/// What a follower reads now and then to tell why it does not take over.
const OWNER: &str = "SELECT owner, jobs_hash FROM tickd_owner WHERE cluster = $1";

/// A follower looks at why it does not own once in this many renewals.
const DIAGNOSE_EVERY: u32 = 25;

/// Gives up ownership at once (a node that leaves): the next follower to look takes over,
/// its window starting now.
const RELEASE: &str = "UPDATE tickd_owner
    SET renewed_at = '-infinity', claimed_until = least(claimed_until, now())
    WHERE cluster = $1 AND owner = $2 AND epoch = $3";

/// The statements of every renewal and every slot taken, prepared once per connection: a
/// statement sent as text is prepared in a round trip of its own each time it runs.
struct Prepared {
    renew: Statement,
    acquire: Statement,
    mark: Statement,
    finish: Statement,
}

impl Prepared {
    async fn on(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Prepared {
            renew: client.prepare(RENEW).await?,
            acquire: client.prepare(ACQUIRE).await?,
            mark: client.prepare(marks::MARK).await?,
            finish: client.prepare(marks::FINISH).await?,
        })
    }
}

/// Follows or owns the cluster until `stop`, reconnecting as needed; releases ownership when
/// the node leaves.
pub(super) async fn keep(shared: Arc<Shared>, clock: Clock, stop: CancellationToken) {
    let settings = shared.settings.clone();
    // One warning per outage, not one per attempt.
    let mut outage_logged = false;
    loop {
        let attempt = async {
            let mut client = connect(&settings).await?;
            schema::migrate(&mut client)
                .await
                .map_err(|err| err.to_string())?;
            let prepared = Prepared::on(&client).await.map_err(|err| err.to_string())?;
            Ok::<_, String>((client, prepared))
        };
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            () = shared.leave.cancelled() => return,
            result = bounded(&clock, settings.window().max(Duration::from_secs(5)), attempt) => result,
        };
        let (client, prepared) = match connected {
            Ok(connected) => connected,
            Err(err) => {
                {
                    let mut state = shared.lock_state();
                    state.connected = false;
                    state.failures += 1;
                }
                if !outage_logged {
                    tracing::warn!("cluster: cannot reach the database (no cluster job fires here until it can): {err}");
                    outage_logged = true;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = shared.leave.cancelled() => return,
                    () = clock.sleep(settings.renew()) => continue,
                }
            }
        };
        if outage_logged {
            tracing::info!("cluster: the database is reachable again");
        }
        match serve(&shared, &client, &prepared, &clock, &stop).await {
            Ok(()) => {
                release(&shared, &client, &prepared, &clock).await;
                return;
            }
            Err(err) => {
                {
                    let mut state = shared.lock_state();
                    state.connected = false;
                    state.failures += 1;
                }
                tracing::warn!("cluster: lost the database connection (no cluster job fires here once the confirmed window ends): {err}");
                outage_logged = true;
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Renews or tries to acquire every `renew`, and takes the marked jobs' slots shortly before
/// their time, on `client`, until `stop` or the node leaves (`Ok`) or an error.
async fn serve(
    shared: &Shared,
    client: &Client,
    prepared: &Prepared,
    clock: &Clock,
    stop: &CancellationToken,
) -> Result<(), String> {
    let settings = &shared.settings;
    // Slots are named and taken in the database's time (see `RemoteClock`).
    let now = || shared.time.read(clock.now());
    let mut agenda = shared.agenda(now().wall);
    let mut ticks: u32 = 0;
    let mut renewal = clock.sleep(Duration::ZERO);
    loop {
        let mut next_take = agenda.next().map(|slot| {
            let lead = chrono::Duration::from_std(lead(shared)).unwrap_or_default();
            clock.sleep_until(now().instant_for_wall(slot - lead))
        });
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = shared.leave.cancelled() => return Ok(()),
            () = &mut renewal => {
                let diagnose = ticks % DIAGNOSE_EVERY == 0;
                let step = step(shared, client, prepared, clock, &agenda, diagnose);
                let look_again = bounded(clock, settings.window(), step).await?;
                bounded(clock, settings.window(), settle(shared, client, &prepared.finish)).await?;
                if look_again {
                    // Slots passed over while following (or named anew by a corrected clock)
                    // may be due within the lead: look again.
                    let lead = chrono::Duration::from_std(lead(shared)).unwrap_or_default();
                    agenda = shared.agenda(now().wall - lead);
                }
                ticks = ticks.wrapping_add(1);
                renewal = clock.sleep(settings.renew());
            }
            () = crate::clock::sleep_or_never(next_take.as_mut()) => {
                let lead = chrono::Duration::from_std(lead(shared)).unwrap_or_default();
                let due = agenda.take_due(now().wall + lead);
                let taking = take(shared, client, &prepared.mark, &due);
                bounded(clock, settings.window(), taking).await?;
            }
            () = shared.jobs_changed.notified() => {
                agenda = shared.agenda(now().wall);
            }
        }
    }
}

/// How long before a slot it is taken: [`marks::LEAD`], or three round trips to the database if
/// that is longer (a distant database must not make every mark late), at most a renewal.
fn lead(shared: &Shared) -> Duration {
    let round_trip = shared.lock_state().round_trip.unwrap_or_default();
    marks::LEAD
        .max(round_trip.saturating_mul(3))
        .min(shared.settings.renew())
}

/// Takes `due` slots if this node owns them: the ones inside its window, under its epoch.
async fn take(
    shared: &Shared,
    client: &Client,
    mark: &Statement,
    due: &[(String, DateTime<Utc>)],
) -> Result<(), String> {
    let Some(lease) = shared.lock_state().lease else {
        return Ok(());
    };
    let ours: Vec<(String, DateTime<Utc>)> = due
        .iter()
        .filter(|(_, slot)| *slot >= lease.window_start && *slot < lease.claimed_until)
        .cloned()
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let settings = &shared.settings;
    let taken = marks::take(client, mark, settings, lease.epoch, &ours)
        .await
        .map_err(|err| err.to_string())?;
    let mut state = shared.lock_state();
    if state.lease.map(|l| l.epoch) == Some(lease.epoch) {
        state.taken.extend(taken);
    }
    Ok(())
}

/// Records the runs of `on_node_loss = "rerun"` jobs that finished since the last time, in one
/// statement (none when there are none); on failure they are kept for the next time.
async fn settle(shared: &Shared, client: &Client, finish: &Statement) -> Result<(), String> {
    let settled = std::mem::take(&mut *shared.lock_settled());
    if settled.is_empty() {
        return Ok(());
    }
    let jobs: Vec<&str> = settled.keys().map(String::as_str).collect();
    let slots: Vec<DateTime<Utc>> = settled.values().copied().collect();
    let result = client
        .execute(finish, &[&shared.settings.name(), &jobs, &slots])
        .await;
    if let Err(err) = result {
        let mut pending = shared.lock_settled();
        for (job, slot) in settled {
            let latest = pending.entry(job).or_insert(slot);
            *latest = (*latest).max(slot);
        }
        return Err(err.to_string());
    }
    Ok(())
}

/// A node that leaves hands its ownership over (see [`RELEASE`]), first recording the runs that
/// finished (it drained them before it left) and giving back the slots it took but did not fire
/// (it stopped firing first), so the next owner runs them.
async fn release(shared: &Shared, client: &Client, prepared: &Prepared, clock: &Clock) {
    let settled = settle(shared, client, &prepared.finish);
    if let Err(err) = bounded(clock, shared.settings.window(), settled).await {
        tracing::warn!("cluster: could not record the runs that finished (the next owner may run them again): {err}");
    }
    let (lease, unfired) = {
        let mut state = shared.lock_state();
        let Some(lease) = state.lease.take() else {
            return;
        };
        let unfired: Vec<(String, DateTime<Utc>)> = state
            .taken
            .iter()
            .filter(|(job, slot)| state.fired.get(*job) != Some(*slot))
            .map(|(job, slot)| (job.clone(), *slot))
            .collect();
        (lease, unfired)
    };
    let settings = &shared.settings;
    let (cluster, node) = (settings.name(), settings.node());
    let released = async {
        if !unfired.is_empty() {
            let jobs: Vec<&str> = unfired.iter().map(|(job, _)| job.as_str()).collect();
            let slots: Vec<DateTime<Utc>> = unfired.iter().map(|(_, slot)| *slot).collect();
            client
                .execute(marks::GIVE_BACK, &[&cluster, &jobs, &slots, &lease.epoch])
                .await
                .map_err(|err| err.to_string())?;
        }
        client
            .execute(RELEASE, &[&cluster, &node, &lease.epoch])
            .await
            .map_err(|err| err.to_string())
    };
    match bounded(clock, settings.window(), released).await {
        Ok(_) => tracing::info!(epoch = lease.epoch, "cluster: ownership released; another node takes over"),
        Err(err) => tracing::warn!("cluster: could not release ownership (another node takes over once it sees the renewals stopped): {err}"),
    }
}

/// One renewal (if this node owns) or one attempt to acquire; `diagnose`: also find out why a
/// follower does not own, to say so. A node that has just taken over runs, once, the latest
/// slot of each marked job that the old owner did not take. Every answer also corrects the
/// estimate of the database's clock. Returns `true` when the slots to take must be looked at
/// again: after a takeover, or a correction of the clock.
async fn step(
    shared: &Shared,
    client: &Client,
    prepared: &Prepared,
    clock: &Clock,
    agenda: &Agenda,
    diagnose: bool,
) -> Result<bool, String> {
    let settings = &shared.settings;
    let (cluster, node) = (settings.name(), settings.node());
    let window = settings.window().as_secs_f64();
    let hash = shared.jobs_hash();
    let held = shared.lock_state().lease;
    let sent = clock.now();
    let boot_sent = boot_time();
    let renewed = match held {
        Some(lease) => client
            .query_opt(
                &prepared.renew,
                &[&cluster, &node, &window, &hash, &lease.epoch],
            )
            .await
            .map_err(|err| err.to_string())?,
        None => None,
    };
    if held.is_some() && renewed.is_none() {
        tracing::warn!(
            epoch = held.map(|l| l.epoch),
            "cluster: this node was deposed; it fires no cluster job until it owns again"
        );
    }
    let (row, sent, boot_sent) = match renewed {
        Some(row) => (row, sent, boot_sent),
        None => {
            let dead_after = settings.dead_after().as_secs_f64();
            // A deposed owner's second statement: its own round trip, its own reading.
            let (sent, boot_sent) = (clock.now(), boot_time());
            let row = client
                .query_one(
                    &prepared.acquire,
                    &[&cluster, &node, &window, &hash, &dead_after],
                )
                .await
                .map_err(|err| err.to_string())?;
            (row, sent, boot_sent)
        }
    };
    let received = clock.now();
    let round_trip = received.saturating_duration_since(sent);
    let (lease, db_now) = lease_from(&row, boot_sent)?;
    // Before the lease is published: no fire is planned on a clock known to be off.
    let corrected = shared
        .time
        .observe(sent, received, db_now, clock.read())
        .is_some();
    if corrected {
        clock_corrected(shared);
    }
    let fresh = held.is_none_or(|old| lease.is_some_and(|new| new.epoch != old.epoch));
    if let (true, Some(lease)) = (fresh, lease) {
        tracing::info!(node, epoch = lease.epoch, window_start = %lease.window_start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "cluster: this node owns the cluster");
        {
            let mut state = shared.lock_state();
            state.lease = Some(lease);
            state.taken.clear();
            state.fired.clear();
            state.takeovers += 1;
        }
        catch_up(shared, client, &prepared.mark, agenda, lease, db_now).await?;
    }
    let refusal = match (lease, diagnose) {
        (None, true) => refusal(client, cluster, &hash).await?,
        (None, false) => shared.lock_state().refusal.clone(),
        (Some(_), _) => None,
    };
    let mut state = shared.lock_state();
    if refusal.is_some() && state.refusal.is_none() {
        tracing::warn!("cluster: {}", refusal.as_deref().unwrap_or(""));
    }
    if lease.is_none() {
        state.taken.clear();
        state.fired.clear();
    }
    state.lease = lease;
    state.connected = true;
    state.round_trip = Some(round_trip);
    state.refusal = refusal;
    Ok((fresh && lease.is_some()) || corrected)
}

/// Says when this node's clock turns out to be off the database's by a notable amount more
/// (or less) than last said: cluster jobs fire on the database's time anyway, but the node's
/// own jobs and its logs do not.
fn clock_corrected(shared: &Shared) {
    let offset = shared.time.offset();
    let mut state = shared.lock_state();
    let told = state.offset_told;
    if (offset - told).abs() >= NOTABLE_OFFSET_CHANGE {
        state.offset_told = offset;
        drop(state);
        let seconds = offset.num_milliseconds() as f64 / 1000.0;
        if offset.abs() >= NOTABLE_OFFSET_CHANGE {
            tracing::warn!(offset_seconds = seconds, "cluster: this node's clock is off the database's; cluster jobs fire on the database's time");
        } else {
            tracing::info!(
                offset_seconds = seconds,
                "cluster: this node's clock agrees with the database's again"
            );
        }
    }
}

/// How much a clock offset must change to be logged.
const NOTABLE_OFFSET_CHANGE: chrono::Duration = chrono::Duration::milliseconds(100);

/// After a takeover: the marked jobs' latest slots the old owner did not take (no older than
/// `catch_up`), taken under the new epoch and handed to the jobs to run once.
async fn catch_up(
    shared: &Shared,
    client: &Client,
    mark: &Statement,
    agenda: &Agenda,
    lease: Lease,
    db_now: DateTime<Utc>,
) -> Result<(), String> {
    let settings = &shared.settings;
    let marks = marks::read(client, settings.name())
        .await
        .map_err(|err| err.to_string())?;
    let send = |job, slot| {
        let _ = shared.catch_ups.send(CatchUp {
            job,
            slot,
            epoch: lease.epoch,
        });
    };
    // Older than any catch-up of the same job: they go first.
    for (job, slot) in agenda.reruns(&marks, db_now, settings.catch_up()) {
        tracing::warn!(job = %job, slot = %slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "cluster: this slot's run did not finish on the previous owner; running it again (on_node_loss = \"rerun\")");
        send(job, slot);
    }
    let missed = agenda.catch_ups(&marks, db_now, lead(shared), settings.catch_up());
    if missed.is_empty() {
        return Ok(());
    }
    let taken = marks::take(client, mark, settings, lease.epoch, &missed)
        .await
        .map_err(|err| err.to_string())?;
    for (job, slot) in taken {
        tracing::info!(job = %job, slot = %slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "cluster: the previous owner did not take this slot; running it once as a catch-up");
        send(job, slot);
    }
    Ok(())
}

/// Why this follower would not take over even if the owner died: its jobs differ.
async fn refusal(client: &Client, cluster: &str, hash: &str) -> Result<Option<String>, String> {
    let row = client
        .query_opt(OWNER, &[&cluster])
        .await
        .map_err(|err| err.to_string())?;
    Ok(row.and_then(|row| {
        let (owner, theirs): (String, String) = (row.try_get(0).ok()?, row.try_get(1).ok()?);
        (!theirs.is_empty() && theirs != hash).then(|| {
            format!("this node's jobs differ from those of the owner ({owner}): it will not take ownership until its jobs file matches")
        })
    }))
}

/// The window a returned row confirms (none: the attempt to acquire lost), and the database's
/// `now()`: it ends, by this node's boot clock, `claimed_until -
/// now()` after the statement was sent (the database's `now()` was read after that, so the
/// window is never overestimated).
fn lease_from(row: &Row, boot_sent: Duration) -> Result<(Option<Lease>, DateTime<Utc>), String> {
    let column = |err: tokio_postgres::Error| err.to_string();
    let epoch: Option<i64> = row.try_get(0).map_err(column)?;
    let window_start: Option<DateTime<Utc>> = row.try_get(1).map_err(column)?;
    let claimed_until: Option<DateTime<Utc>> = row.try_get(2).map_err(column)?;
    let db_now: DateTime<Utc> = row.try_get(3).map_err(column)?;
    let lease = match (epoch, window_start, claimed_until) {
        (Some(epoch), Some(window_start), Some(claimed_until)) => {
            let left = (claimed_until - db_now).to_std().unwrap_or_default();
            Some(Lease {
                epoch,
                window_start,
                claimed_until,
                ends_at_boot: boot_sent + left,
            })
        }
        _ => None,
    };
    Ok((lease, db_now))
}

/// Connects to the cluster's database; the password may come from `PGPASSWORD`.
async fn connect(settings: &crate::config::ClusterSettings) -> Result<Client, String> {
    // Parsed again here (validated at load): the connector reads `sslrootcert` at each
    // connection, so a renewed CA file applies at the next reconnect.
    let target = super::tls::Target::parse(settings.postgres()).map_err(|err| err.to_string())?;
    let tls = target.connector().map_err(|err| err.to_string())?;
    let mut config = target.config;
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    config
        .application_name(format!("tickd {}", settings.node()))
        .connect_timeout(settings.window().max(Duration::from_secs(1)))
        .keepalives(true);
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|err| super::tls::with_causes(&err))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!("cluster: database connection ended: {err}");
        }
    });
    Ok(client)
}

/// `work`, or an error once `limit` has passed: a database that stopped answering (a partition
/// that drops packets) must not hold the loop past the window.
async fn bounded<T>(
    clock: &Clock,
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::select! {
        result = work => result,
        () = clock.sleep(limit) => Err(format!("no answer within {}", humantime::format_duration(limit))),
    }
}
