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
use tokio_postgres::{Client, NoTls, Row};
use tokio_util::sync::CancellationToken;

use super::schema;
use super::{Lease, Shared};
use crate::clock::{boot_time, Clock};

/// The owner extends its window from the database's `now()`; fenced by owner and epoch.
const RENEW: &str = "UPDATE tickd_owner
    SET claimed_until = greatest(claimed_until, now() + make_interval(secs => $3)),
        renewed_at = now(), jobs_hash = $4
    WHERE cluster = $1 AND owner = $2 AND epoch = $5
    RETURNING epoch, window_start, claimed_until, now()";

/// A node that owns nothing creates the row, or takes it over from an owner whose renewals
/// stopped; its window starts where the old one ends.
const ACQUIRE: &str = "INSERT INTO tickd_owner AS o
        (cluster, owner, epoch, window_start, claimed_until, renewed_at, jobs_hash)
    VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3), now(), $4)
    ON CONFLICT (cluster) DO UPDATE SET
        owner = excluded.owner,
        epoch = o.epoch + 1,
        window_start = greatest(o.claimed_until, now()),
        claimed_until = greatest(o.claimed_until, now()) + make_interval(secs => $3),
        renewed_at = now(),
        jobs_hash = excluded.jobs_hash
    WHERE (o.jobs_hash = excluded.jobs_hash OR o.jobs_hash = '')
        AND (o.renewed_at < now() - make_interval(secs => $5) OR o.owner = excluded.owner)
    RETURNING o.epoch, o.window_start, o.claimed_until, now()";

/// What a follower reads now and then to tell why it does not take over.
const OWNER: &str = "SELECT owner, jobs_hash FROM tickd_owner WHERE cluster = $1";

/// A follower looks at why it does not own once in this many renewals.
const DIAGNOSE_EVERY: u32 = 25;

/// Follows or owns the cluster until `stop`, reconnecting as needed.
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
            Ok::<Client, String>(client)
        };
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            result = bounded(&clock, settings.window().max(Duration::from_secs(5)), attempt) => result,
        };
        let client = match connected {
            Ok(client) => client,
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
                    () = clock.sleep(settings.renew()) => continue,
                }
            }
        };
        if outage_logged {
            tracing::info!("cluster: the database is reachable again");
            outage_logged = false;
        }
        if let Err(err) = serve(&shared, &client, &clock, &stop).await {
            {
                let mut state = shared.lock_state();
                state.connected = false;
                state.failures += 1;
            }
            tracing::warn!("cluster: lost the database connection (no cluster job fires here once the confirmed window ends): {err}");
            outage_logged = true;
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Renews or tries to acquire every `renew` on `client` until `stop` or an error.
async fn serve(
    shared: &Shared,
    client: &Client,
    clock: &Clock,
    stop: &CancellationToken,
) -> Result<(), String> {
    let settings = &shared.settings;
    let mut ticks: u32 = 0;
    loop {
        let step = step(shared, client, clock, ticks % DIAGNOSE_EVERY == 0);
        match bounded(clock, settings.window(), step).await {
            Ok(()) => {}
            Err(err) => return Err(err),
        }
        ticks = ticks.wrapping_add(1);
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = clock.sleep(settings.renew()) => {}
        }
    }
}

/// One renewal (if this node owns) or one attempt to acquire; `diagnose`: also find out why a
/// follower does not own, to say so.
async fn step(
    shared: &Shared,
    client: &Client,
    clock: &Clock,
    diagnose: bool,
) -> Result<(), String> {
    let settings = &shared.settings;
    let (cluster, node) = (settings.name(), settings.node());
    let window = settings.window().as_secs_f64();
    let hash = shared.jobs_hash();
    let held = shared.lock_state().lease;
    let sent = clock.now();
    let boot_sent = boot_time();
    let renewed = match held {
        Some(lease) => client
            .query_opt(RENEW, &[&cluster, &node, &window, &hash, &lease.epoch])
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
    let row = match renewed {
        Some(row) => Some(row),
        None => {
            let dead_after = settings.dead_after().as_secs_f64();
            client
                .query_opt(ACQUIRE, &[&cluster, &node, &window, &hash, &dead_after])
                .await
                .map_err(|err| err.to_string())?
        }
    };
    let round_trip = clock.now().saturating_duration_since(sent);
    let lease = row.map(|row| lease_from(&row, boot_sent)).transpose()?;
    if let (None, Some(lease)) = (held, lease) {
        tracing::info!(node, epoch = lease.epoch, window_start = %lease.window_start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "cluster: this node owns the cluster");
    }
    let refusal = match (lease, diagnose) {
        (None, true) => refusal(client, cluster, &hash).await?,
        (None, false) => shared.lock_state().refusal.clone(),
        (Some(_), _) => None,
    };
    let mut state = shared.lock_state();
    if held.is_none() && lease.is_some() {
        state.takeovers += 1;
    }
    if refusal.is_some() && state.refusal.is_none() {
        tracing::warn!("cluster: {}", refusal.as_deref().unwrap_or(""));
    }
    state.lease = lease;
    state.connected = true;
    state.round_trip = Some(round_trip);
    state.refusal = refusal;
    Ok(())
}

/// Why this follower would not take over even if the owner died: its jobs differ.
async fn refusal(client: &Client, cluster: &str, hash: &str) -> Result<Option<String>, String> {
    let row = client
        .query_opt(OWNER, &[&cluster])
        .await
        .map_err(|err| err.to_string())?;
    Ok(row.and_then(|row| {
        let (owner, theirs): (String, String) = (row.get(0), row.get(1));
        (!theirs.is_empty() && theirs != hash).then(|| {
            format!("this node's jobs differ from those of the owner ({owner}): it will not take ownership until its jobs file matches")
        })
    }))
}

/// The window a returned row confirms: it ends, by this node's boot clock, `claimed_until -
/// now()` after the statement was sent (the database's `now()` was read after that, so the
/// window is never overestimated).
fn lease_from(row: &Row, boot_sent: Duration) -> Result<Lease, String> {
    let epoch: i64 = row.try_get(0).map_err(|err| err.to_string())?;
    let window_start: DateTime<Utc> = row.try_get(1).map_err(|err| err.to_string())?;
    let claimed_until: DateTime<Utc> = row.try_get(2).map_err(|err| err.to_string())?;
    let db_now: DateTime<Utc> = row.try_get(3).map_err(|err| err.to_string())?;
    let left = (claimed_until - db_now).to_std().unwrap_or_default();
    Ok(Lease {
        epoch,
        window_start,
        claimed_until,
        ends_at_boot: boot_sent + left,
    })
}

/// Connects to the cluster's database; the password may come from `PGPASSWORD`.
async fn connect(settings: &crate::config::ClusterSettings) -> Result<Client, String> {
    let mut config: tokio_postgres::Config = settings
        .postgres()
        .parse()
        .map_err(|err: tokio_postgres::Error| err.to_string())?;
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    config
        .application_name(format!("tickd {}", settings.node()))
        .connect_timeout(settings.window().max(Duration::from_secs(1)))
        .keepalives(true);
    let (client, connection) = config.connect(NoTls).await.map_err(|err| err.to_string())?;
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
