//! The ownership protocol, one statement per renewal interval (see the module doc of
//! [`super`] and of [`super::shards`]).
//!
//! One row per shard of a cluster: `owner`, `epoch`, `previous_epoch`, `window_start`,
//! `claimed_until`, `renewed_at`, `jobs_hash`; and one row per node (`tickd_nodes`), its
//! heartbeat. At each renewal a node sends one statement ([`ROUND`]) that beats its heart,
//! renews the shards it keeps (an `UPDATE` fenced by each one's epoch: no row back, it was
//! deposed), releases the ones over its share (its window stays: it fires them until it ends),
//! and takes free shards up to its share (released, or silent for `dead_after`), in one
//! `INSERT ... ON CONFLICT DO UPDATE ... WHERE` per shard that PostgreSQL re-checks on the locked
//! row, so of several nodes exactly one wins; the new window starts at the old `claimed_until`.
//! It answers the shards renewed and taken, the database's `now()`, and the live nodes when they
//! changed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Row, Statement};
use tokio_util::sync::CancellationToken;

use super::marks::{self, Agenda};
use super::schema;
use super::shards::{self, Member};
use super::{CatchUp, Lease, Shared, Taken};
use crate::clock::{boot_time, Clock};

/// One renewal: `$1` cluster, `$2` node, `$3` window (s), `$4` jobs hash, `$5` dead_after (s),
/// `$6` weight; `$7`/`$8` the shards (and epochs) kept, `$9`/`$10` those released; `$11` how
/// many free shards to take, `$12` shards not to take (this node's own released ones), `$13` the
/// shard count; `$14` the digest of the live nodes as last known; `$15` every shard, in the order
/// this node wants them (see [`shards::preference`]).
///
/// A node whose jobs differ from a shard's owner's takes it only once that owner released it or
/// has been silent for three times `dead_after` (nodes with the owner's jobs go first): a rolling
/// deploy that changes the jobs must not leave shards with no owner at all. A node restarted
/// under its old name waits like any other: two live processes under one name must not take
/// shards back and forth.
const ROUND: &str = "WITH heartbeat AS (
    INSERT INTO tickd_nodes AS n (cluster, node, weight, jobs_hash, seen_at)
    VALUES ($1, $2, $6, $4, now())
    ON CONFLICT (cluster, node) DO UPDATE
        SET weight = excluded.weight, jobs_hash = excluded.jobs_hash, seen_at = now()
    RETURNING 1
),
renewed AS (
    UPDATE tickd_owner AS o
    SET claimed_until = greatest(o.claimed_until, now() + make_interval(secs => $3)),
        renewed_at = now(), jobs_hash = $4
    FROM unnest($7::int[], $8::bigint[]) AS h(shard, epoch)
    WHERE o.cluster = $1 AND o.shard = h.shard AND o.owner = $2 AND o.epoch = h.epoch
    RETURNING o.shard, o.epoch, o.window_start, o.claimed_until
),
released AS (
    UPDATE tickd_owner AS o SET renewed_at = '-infinity'
    FROM unnest($9::int[], $10::bigint[]) AS h(shard, epoch)
    WHERE o.cluster = $1 AND o.shard = h.shard AND o.owner = $2 AND o.epoch = h.epoch
    RETURNING o.shard
),
free AS (
    SELECT p.s AS shard FROM unnest($15::int[]) WITH ORDINALITY AS p(s, rank)
    WHERE $11::int > 0 AND p.s < $13::int AND p.s <> ALL ($12::int[])
        AND p.s <> ALL ($7::int[]) AND NOT EXISTS (
            SELECT 1 FROM tickd_owner AS o
            WHERE o.cluster = $1 AND o.shard = p.s
                AND o.renewed_at >= now() - make_interval(secs => $5::float8))
    ORDER BY p.rank
    LIMIT greatest($11::int, 0)
),
acquired AS (
    INSERT INTO tickd_owner AS o (cluster, shard, owner, epoch, previous_epoch, window_start,
        claimed_until, renewed_at, jobs_hash)
    SELECT $1, shard, $2, 1, 0, now(), now() + make_interval(secs => $3), now(), $4 FROM free
    ON CONFLICT (cluster, shard) DO UPDATE SET
        owner = excluded.owner,
        epoch = o.epoch + 1,
        previous_epoch = o.epoch,
        window_start = greatest(o.claimed_until, now()),
        claimed_until = greatest(o.claimed_until, now()) + make_interval(secs => $3),
        renewed_at = now(),
        jobs_hash = excluded.jobs_hash
    WHERE (o.jobs_hash = excluded.jobs_hash OR o.jobs_hash = ''
            OR o.renewed_at < now() - make_interval(secs => $5::float8 * 3))
        AND o.renewed_at < now() - make_interval(secs => $5::float8)
    RETURNING o.shard, o.epoch, o.window_start, o.claimed_until
),
members AS (
    SELECT node, weight FROM tickd_nodes
    WHERE cluster = $1 AND jobs_hash = $4
        AND seen_at > now() - make_interval(secs => $5::float8)
),
digest AS (
    SELECT md5(coalesce(string_agg(node || '=' || weight, ',' ORDER BY node), '')) AS value
    FROM members
),
counts AS (
    SELECT owner, count(*) AS owned FROM tickd_owner
    WHERE cluster = $1 AND renewed_at >= now() - make_interval(secs => $5::float8)
    GROUP BY owner
),
standing AS (
    SELECT m.node, coalesce(c.owned, 0) AS owned, ($13::bigint * m.weight) / t.total AS floor
    FROM members AS m
    CROSS JOIN (SELECT sum(weight) AS total FROM members) AS t
    LEFT JOIN counts AS c ON c.owner = m.node
),
unowned AS (
    SELECT $13::int - count(*)::int AS value FROM tickd_owner
    WHERE cluster = $1 AND shard < $13::int
        AND renewed_at >= now() - make_interval(secs => $5::float8)
),
deficit AS (
    SELECT greatest(
        coalesce((SELECT sum(greatest(floor - owned, 0)) FROM standing), 0)::int
            - (SELECT value FROM unowned),
        0) AS value
),
givers AS (
    SELECT node, coalesce(sum(owned - floor) OVER (
            ORDER BY owned - floor DESC, md5(node)
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)::int AS spare_before
    FROM standing WHERE owned > floor
)
SELECT 'r' AS kind, shard, epoch, window_start, claimed_until, now() AS now,
    NULL::text AS digest, NULL::text[] AS nodes, NULL::int[] AS weights, NULL::int AS deficit,
    NULL::int AS spare_before
FROM renewed
UNION ALL
SELECT 'a', shard, epoch, window_start, claimed_until, now(), NULL, NULL, NULL, NULL, NULL
FROM acquired
UNION ALL
SELECT 'i', (SELECT count(*)::int FROM released), NULL, NULL, NULL, now(), digest.value,
    CASE WHEN digest.value = $14 THEN NULL
        ELSE (SELECT array_agg(node ORDER BY node) FROM members) END,
    CASE WHEN digest.value = $14 THEN NULL
        ELSE (SELECT array_agg(weight ORDER BY node) FROM members) END,
    deficit.value,
    coalesce((SELECT spare_before FROM givers WHERE node = $2), 0)
FROM digest, deficit";

/// Who owns which shards (every few seconds, for the status), and a live owner whose jobs
/// differ from this node's, if any (why this node may not take its shards).
const DIAGNOSE: &str = "SELECT owner, array_agg(shard ORDER BY shard),
        bool_or(jobs_hash <> $2 AND jobs_hash <> '')
    FROM tickd_owner
    WHERE cluster = $1 AND renewed_at > now() - make_interval(secs => $3::float8)
    GROUP BY owner ORDER BY owner";

/// A node looks at who owns what once in this many renewals.
const DIAGNOSE_EVERY: u32 = 25;

/// Gives up the shards `$3` (epochs `$4`) at once (a node that leaves): the next nodes to look
/// take them over, their windows starting now; and takes the node off the live list.
const LEAVE: &str = "WITH gone AS (
        DELETE FROM tickd_nodes WHERE cluster = $1 AND node = $2
    )
    UPDATE tickd_owner AS o
    SET renewed_at = '-infinity', claimed_until = least(o.claimed_until, now())
    FROM unnest($3::int[], $4::bigint[]) AS h(shard, epoch)
    WHERE o.cluster = $1 AND o.shard = h.shard AND o.owner = $2 AND o.epoch = h.epoch";

/// The statements of every renewal and every slot taken, prepared once per connection: a
/// statement sent as text is prepared in a round trip of its own each time it runs.
struct Prepared {
    round: Statement,
    mark: Statement,
    finish: Statement,
}

impl Prepared {
    async fn on(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Prepared {
            round: client.prepare(ROUND).await?,
            mark: client.prepare(marks::MARK).await?,
            finish: client.prepare(marks::FINISH).await?,
        })
    }
}

/// What the lease task remembers from one renewal to the next: the live nodes.
#[derive(Debug, Default)]
struct Seen {
    members: Vec<Member>,
    digest: String,
    /// Set once the first answer came: until then this node does not know who else is live,
    /// and takes nothing (it would take every shard, and hand most back a moment later).
    known: bool,
    /// How the live nodes stand: what the ones under their share lack, and what the ones
    /// that give before this one can spare.
    standing: shards::Standing,
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

/// Renews and takes shards every `renew`, and takes the marked jobs' slots shortly before
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
    let mut seen = Seen::default();
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
                let renewing = round(shared, client, prepared, clock, &agenda, &mut seen);
                let look_again = bounded(clock, settings.window(), renewing).await?;
                bounded(clock, settings.window(), settle(shared, client, &prepared.finish)).await?;
                if ticks % DIAGNOSE_EVERY == 0 {
                    bounded(clock, settings.window(), diagnose(shared, client)).await?;
                }
                if look_again {
                    // Slots passed over while not owning (or named anew by a corrected clock)
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

/// Takes `due` slots this node owns: the ones inside the window of their shard, under its epoch.
async fn take(
    shared: &Shared,
    client: &Client,
    mark: &Statement,
    due: &[(String, DateTime<Utc>)],
) -> Result<(), String> {
    let ours = shared.owned_slots(due);
    if ours.is_empty() {
        return Ok(());
    }
    let settings = &shared.settings;
    let taken = marks::take(client, mark, settings, &ours)
        .await
        .map_err(|err| err.to_string())?;
    let until_boot = crate::clock::boot_time() + settings.catch_up();
    // A set: a thousand jobs due at one instant are looked up under the lock every fire takes.
    let taken: HashSet<(&str, DateTime<Utc>)> = taken
        .iter()
        .map(|(job, slot)| (job.as_str(), *slot))
        .collect();
    let mut state = shared.lock_state();
    for (job, slot, shard, epoch) in ours {
        let got = taken.contains(&(job.as_str(), slot));
        tracing::debug!(job, %slot, shard, epoch, got, "cluster: mark");
        if got {
            let slot_taken = Taken {
                slot,
                epoch,
                until_boot,
            };
            state.taken.insert(job, slot_taken);
        }
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

/// A node that leaves hands its shards over (see [`LEAVE`]), first recording the runs that
/// finished (it drained them before it left) and giving back the slots it took but did not fire
/// (it stopped firing first), so the next owners run them.
async fn release(shared: &Shared, client: &Client, prepared: &Prepared, clock: &Clock) {
    let settled = settle(shared, client, &prepared.finish);
    if let Err(err) = bounded(clock, shared.settings.window(), settled).await {
        tracing::warn!("cluster: could not record the runs that finished (the next owner may run them again): {err}");
    }
    let (leases, unfired) = {
        let mut state = shared.lock_state();
        let leases = std::mem::take(&mut state.leases);
        let unfired: Vec<(String, DateTime<Utc>, i64)> = state
            .taken
            .iter()
            .filter(|(job, taken)| state.fired.get(*job) != Some(&taken.slot))
            .map(|(job, taken)| (job.clone(), taken.slot, taken.epoch))
            .collect();
        (leases, unfired)
    };
    let settings = &shared.settings;
    let (cluster, node) = (settings.name(), settings.node());
    let shards: Vec<i32> = leases
        .keys()
        .map(|s| i32::try_from(*s).unwrap_or(i32::MAX))
        .collect();
    let epochs: Vec<i64> = leases.values().map(|lease| lease.epoch).collect();
    let released = async {
        if !unfired.is_empty() {
            let jobs: Vec<&str> = unfired.iter().map(|(job, ..)| job.as_str()).collect();
            let slots: Vec<DateTime<Utc>> = unfired.iter().map(|(_, slot, _)| *slot).collect();
            let epochs: Vec<i64> = unfired.iter().map(|(.., epoch)| *epoch).collect();
            client
                .execute(marks::GIVE_BACK, &[&cluster, &jobs, &slots, &epochs])
                .await
                .map_err(|err| err.to_string())?;
        }
        client
            .execute(LEAVE, &[&cluster, &node, &shards, &epochs])
            .await
            .map_err(|err| err.to_string())
    };
    match bounded(clock, settings.window(), released).await {
        Ok(_) if leases.is_empty() => tracing::info!("cluster: left the cluster"),
        Ok(_) => tracing::info!(shards = leases.len(), "cluster: ownership released; other nodes take over"),
        Err(err) => tracing::warn!("cluster: could not release ownership (other nodes take over once they see the renewals stopped): {err}"),
    }
}

/// One renewal (see [`ROUND`]). A node that has just taken shards over runs, once, the latest
/// slot of each of their marked jobs that the old owner did not take. Every answer also corrects
/// the estimate of the database's clock. Returns `true` when the slots to take must be looked at
/// again: after a takeover, or a correction of the clock.
async fn round(
    shared: &Shared,
    client: &Client,
    prepared: &Prepared,
    clock: &Clock,
    agenda: &Agenda,
    seen: &mut Seen,
) -> Result<bool, String> {
    let settings = &shared.settings;
    let (cluster, node) = (settings.name(), settings.node());
    let plan = plan_round(shared, seen);
    let window = settings.window().as_secs_f64();
    let dead_after = settings.dead_after().as_secs_f64();
    let weight = i32::try_from(settings.weight()).unwrap_or(1);
    let shard_count = i32::try_from(settings.shards()).unwrap_or(1);
    let hash = shared.jobs_hash();
    let sent = clock.now();
    let boot_sent = boot_time();
    let rows = client
        .query(
            &prepared.round,
            &[
                &cluster,
                &node,
                &window,
                &hash,
                &dead_after,
                &weight,
                &plan.renew_shards,
                &plan.renew_epochs,
                &plan.release_shards,
                &plan.release_epochs,
                &plan.take,
                &plan.not_to_take,
                &shard_count,
                &seen.digest,
                &plan.preference,
            ],
        )
        .await
        .map_err(|err| err.to_string())?;
    let received = clock.now();
    let answer = Answer::read(&rows, boot_sent)?;
    // Before the leases are published: no fire is planned on a clock known to be off.
    let corrected = shared
        .time
        .observe(sent, received, answer.db_now, clock.read())
        .is_some();
    if corrected {
        clock_corrected(shared);
    }
    if let Some(members) = answer.members {
        seen.members = members;
        seen.digest = answer.digest;
    }
    seen.known = true;
    seen.standing = answer.standing;
    let acquired: Vec<(u32, Lease)> = answer.acquired;
    let boot_now = boot_time();
    {
        let mut state = shared.lock_state();
        let renewed: HashSet<u32> = answer.renewed.iter().map(|(shard, _)| *shard).collect();
        let deposed: Vec<u32> = plan
            .kept
            .iter()
            .copied()
            .filter(|shard| !renewed.contains(shard))
            .collect();
        if !deposed.is_empty() {
            tracing::warn!(
                ?deposed,
                "cluster: shards taken from this node (deposed); it fires their jobs no more"
            );
        }
        for shard in &deposed {
            state.leases.remove(shard);
        }
        for (shard, lease) in answer.renewed {
            state.leases.insert(shard, lease);
        }
        for shard in &plan.released {
            if let Some(lease) = state.leases.get_mut(shard) {
                lease.released = true;
            }
        }
        state.handoffs += u64::try_from(plan.released.len() + acquired.len()).unwrap_or(0);
        for (shard, lease) in &acquired {
            state.leases.insert(*shard, *lease);
        }
        if !acquired.is_empty() {
            state.takeovers += u64::try_from(acquired.len()).unwrap_or(0);
        }
        // Released shards whose windows ended are gone.
        state
            .leases
            .retain(|_, lease| !lease.released || boot_now < lease.ends_at_boot);
        state.connected = true;
        state.round_trip = Some(received.saturating_duration_since(sent));
    }
    if !plan.released.is_empty() {
        tracing::info!(shards = ?plan.released, "cluster: shards released to other nodes (this node fires them until their windows end)");
    }
    if !acquired.is_empty() {
        let shards: Vec<u32> = acquired.iter().map(|(shard, _)| *shard).collect();
        let epochs: Vec<i64> = acquired.iter().map(|(_, lease)| lease.epoch).collect();
        tracing::info!(
            node,
            ?shards,
            ?epochs,
            "cluster: this node took over shards"
        );
        catch_up(
            shared,
            client,
            &prepared.mark,
            agenda,
            &acquired,
            answer.db_now,
        )
        .await?;
    }
    Ok(!acquired.is_empty() || corrected)
}

/// What one renewal sends about the shards.
#[derive(Debug, Default)]
struct RoundPlan {
    /// The shards kept (renewed), and their epochs.
    kept: Vec<u32>,
    renew_shards: Vec<i32>,
    renew_epochs: Vec<i64>,
    /// The shards released, and their epochs.
    released: Vec<u32>,
    release_shards: Vec<i32>,
    release_epochs: Vec<i64>,
    /// How many free shards to take.
    take: i32,
    /// This node's released shards: not taken back while it still fires them.
    not_to_take: Vec<i32>,
    /// Every shard, in the order this node wants them.
    preference: Vec<i32>,
}

/// Which shards to keep, release and take, from this node's share among the live nodes last
/// seen (see [`shards::moves`]).
fn plan_round(shared: &Shared, seen: &Seen) -> RoundPlan {
    let settings = &shared.settings;
    let boot_now = boot_time();
    let state = shared.lock_state();
    let owned: Vec<u32> = state
        .leases
        .iter()
        .filter(|(_, lease)| !lease.released && boot_now < lease.ends_at_boot)
        .map(|(shard, _)| *shard)
        .collect();
    let released_here: Vec<i32> = state
        .leases
        .iter()
        .filter(|(_, lease)| lease.released)
        .map(|(shard, _)| i32::try_from(*shard).unwrap_or(i32::MAX))
        .collect();
    let count = u32::try_from(owned.len()).unwrap_or(u32::MAX);
    let (release, take) = if seen.known {
        let bounds = shards::bounds(
            &seen.members,
            settings.shards(),
            settings.node(),
            settings.weight(),
        );
        shards::moves(count, bounds, seen.standing)
    } else {
        (0, 0)
    };
    let release = usize::try_from(release).unwrap_or(0);
    let preference = {
        let jobs = shared.lock_jobs();
        let per_shard: Vec<usize> = jobs.load.iter().map(|l| l.jobs).collect();
        let released = shards::to_release(&owned, release, &per_shard, settings.node());
        let kept_jobs: usize = owned
            .iter()
            .filter(|s| !released.contains(s))
            .filter_map(|s| per_shard.get(usize::try_from(*s).unwrap_or(usize::MAX)))
            .sum();
        let kept_count = owned.len() - released.len();
        // Only a node that takes shards needs the order (the statement reads it only then).
        let preference = if take > 0 {
            shards::preference(&per_shard, kept_jobs, kept_count, settings.node())
        } else {
            Vec::new()
        };
        (preference, released)
    };
    let (preference, mut released) = preference;
    // A shard beyond the shard count (it was lowered) goes too.
    released.extend(owned.iter().copied().filter(|s| *s >= settings.shards()));
    released.sort_unstable();
    released.dedup();
    let kept: Vec<u32> = owned
        .iter()
        .copied()
        .filter(|s| !released.contains(s))
        .collect();
    tracing::debug!(
        owned = owned.len(),
        members = seen.members.len(),
        deficit = seen.standing.deficit,
        release = released.len(),
        take,
        "cluster: round"
    );
    let epoch = |shard: &u32| state.leases.get(shard).map_or(0, |lease| lease.epoch);
    let as_i32 = |shard: &u32| i32::try_from(*shard).unwrap_or(i32::MAX);
    RoundPlan {
        renew_shards: kept.iter().map(as_i32).collect(),
        renew_epochs: kept.iter().map(epoch).collect(),
        release_shards: released.iter().map(as_i32).collect(),
        release_epochs: released.iter().map(epoch).collect(),
        take: i32::try_from(take).unwrap_or(0),
        not_to_take: released_here,
        preference: preference
            .iter()
            .map(|s| i32::try_from(*s).unwrap_or(i32::MAX))
            .collect(),
        kept,
        released,
    }
}

/// What a [`ROUND`] answered.
#[derive(Debug)]
struct Answer {
    renewed: Vec<(u32, Lease)>,
    acquired: Vec<(u32, Lease)>,
    db_now: DateTime<Utc>,
    digest: String,
    /// The live nodes, when they changed.
    members: Option<Vec<Member>>,
    standing: shards::Standing,
}

impl Answer {
    /// The rows of a round; each window ends, by this node's boot clock, `claimed_until - now()`
    /// after the statement was sent (the database's `now()` was read after that, so a window is
    /// never overestimated).
    fn read(rows: &[Row], boot_sent: Duration) -> Result<Answer, String> {
        let column = |err: tokio_postgres::Error| err.to_string();
        let mut info = false;
        let mut answer = Answer {
            renewed: Vec::new(),
            acquired: Vec::new(),
            db_now: DateTime::UNIX_EPOCH,
            digest: String::new(),
            members: None,
            standing: shards::Standing::default(),
        };
        for row in rows {
            let kind: String = row.try_get(0).map_err(column)?;
            let db_now: DateTime<Utc> = row.try_get(5).map_err(column)?;
            answer.db_now = db_now;
            if kind == "i" {
                info = true;
                answer.digest = row
                    .try_get::<_, Option<String>>(6)
                    .map_err(column)?
                    .unwrap_or_default();
                let count = |index: usize| -> Result<u32, String> {
                    let value: Option<i32> = row.try_get(index).map_err(column)?;
                    Ok(u32::try_from(value.unwrap_or(0)).unwrap_or(0))
                };
                answer.standing = shards::Standing {
                    deficit: count(9)?,
                    spare_before: count(10)?,
                };
                let nodes: Option<Vec<String>> = row.try_get(7).map_err(column)?;
                let weights: Option<Vec<i32>> = row.try_get(8).map_err(column)?;
                if let Some(nodes) = nodes {
                    let weights = weights.unwrap_or_default();
                    answer.members = Some(
                        nodes
                            .into_iter()
                            .zip(weights.into_iter().chain(std::iter::repeat(1)))
                            .map(|(node, weight)| Member {
                                node,
                                weight: u32::try_from(weight).unwrap_or(1),
                            })
                            .collect(),
                    );
                } else if answer.digest == "d41d8cd98f00b204e9800998ecf8427e" {
                    // The digest of no node at all: nothing to compare against.
                    answer.members = Some(Vec::new());
                }
                continue;
            }
            let shard: i32 = row.try_get(1).map_err(column)?;
            let epoch: i64 = row.try_get(2).map_err(column)?;
            let window_start: DateTime<Utc> = row.try_get(3).map_err(column)?;
            let claimed_until: DateTime<Utc> = row.try_get(4).map_err(column)?;
            let left = (claimed_until - db_now).to_std().unwrap_or_default();
            let lease = Lease {
                epoch,
                window_start,
                claimed_until,
                ends_at_boot: boot_sent + left,
                released: false,
            };
            let shard = u32::try_from(shard).unwrap_or(0);
            match kind.as_str() {
                "r" => answer.renewed.push((shard, lease)),
                _ => answer.acquired.push((shard, lease)),
            }
        }
        if !info {
            // Without it there is no `now()`, and no window can be measured.
            return Err("the round statement answered no status row".to_owned());
        }
        Ok(answer)
    }
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

/// After taking shards over: the marked jobs' reruns and latest slots the old owners did not
/// take (no older than `catch_up`), taken under the new epochs and handed to the jobs to run once.
async fn catch_up(
    shared: &Shared,
    client: &Client,
    mark: &Statement,
    agenda: &Agenda,
    acquired: &[(u32, Lease)],
    db_now: DateTime<Utc>,
) -> Result<(), String> {
    let settings = &shared.settings;
    let epochs: BTreeMap<u32, i64> = acquired
        .iter()
        .map(|(s, lease)| (*s, lease.epoch))
        .collect();
    let epoch_of = |job: &str| {
        let shard = shared.lock_jobs().shard_of.get(job).copied()?;
        epochs.get(&shard).copied()
    };
    let marks = marks::read(client, settings.name())
        .await
        .map_err(|err| err.to_string())?;
    let send = |job: String, slot, epoch| {
        let _ = shared.catch_ups.send(CatchUp { job, slot, epoch });
    };
    // Older than any catch-up of the same job: they go first.
    for (job, slot) in agenda.reruns(&marks, db_now, settings.catch_up()) {
        let Some(epoch) = epoch_of(&job) else {
            continue;
        };
        tracing::warn!(job = %job, slot = %slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "cluster: this slot's run did not finish on the previous owner; running it again (on_node_loss = \"rerun\")");
        send(job, slot, epoch);
    }
    let missed: Vec<(String, DateTime<Utc>, i64)> = agenda
        .catch_ups(&marks, db_now, lead(shared), settings.catch_up())
        .into_iter()
        .filter_map(|(job, slot)| epoch_of(&job).map(|epoch| (job, slot, epoch)))
        .collect();
    if missed.is_empty() {
        return Ok(());
    }
    let taken = marks::take(client, mark, settings, &shared.with_shards(&missed))
        .await
        .map_err(|err| err.to_string())?;
    for (job, slot) in taken {
        let Some(epoch) = epoch_of(&job) else {
            continue;
        };
        tracing::info!(job = %job, slot = %slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "cluster: the previous owner did not take this slot; running it once as a catch-up");
        send(job, slot, epoch);
    }
    Ok(())
}

/// Who owns which shards, for the status; and why this node may not take shards: a live owner's
/// jobs differ from its own.
async fn diagnose(shared: &Shared, client: &Client) -> Result<(), String> {
    let settings = &shared.settings;
    let hash = shared.jobs_hash();
    let dead_after = settings.dead_after().as_secs_f64();
    let rows = client
        .query(DIAGNOSE, &[&settings.name(), &hash, &dead_after])
        .await
        .map_err(|err| err.to_string())?;
    let mut owners = BTreeMap::new();
    let mut differing = None;
    for row in &rows {
        let owner: String = row.try_get(0).map_err(|e| e.to_string())?;
        let shards: Vec<i32> = row.try_get(1).map_err(|e| e.to_string())?;
        let differs: Option<bool> = row.try_get(2).map_err(|e| e.to_string())?;
        if differs == Some(true) && differing.is_none() {
            differing = Some(owner.clone());
        }
        owners.insert(
            owner,
            shards
                .into_iter()
                .filter_map(|s| u32::try_from(s).ok())
                .collect(),
        );
    }
    let refusal = differing.map(|owner| {
        format!("this node's jobs differ from those of the owner ({owner}): it will not take ownership of its shards until its jobs file matches")
    });
    let mut state = shared.lock_state();
    if refusal.is_some() && state.refusal.is_none() {
        tracing::warn!("cluster: {}", refusal.as_deref().unwrap_or(""));
    }
    state.refusal = refusal;
    state.owners = owners;
    Ok(())
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
