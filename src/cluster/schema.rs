//! tickd's own tables: created and upgraded by tickd, versioned, idempotent, and safe when
//! several nodes start at once (one migration runs at a time, under a transaction-scoped
//! advisory lock).

use tokio_postgres::Client;

/// The schema this tickd knows.
pub(super) const VERSION: i32 = 4;

/// An arbitrary constant: the advisory lock that serializes tickd's migrations.
const MIGRATION_LOCK: i64 = 0x7469_636b_6400;

/// Each version's statements, in order: version `n` is `MIGRATIONS[n - 1]`.
const MIGRATIONS: [&str; VERSION as usize] = [
    // 1: the ownership row of each cluster (see `lease`).
    "CREATE TABLE tickd_owner (
        cluster text PRIMARY KEY,
        owner text NOT NULL,
        epoch bigint NOT NULL,
        window_start timestamptz NOT NULL,
        claimed_until timestamptz NOT NULL,
        renewed_at timestamptz NOT NULL,
        jobs_hash text NOT NULL
    )",
    // 2: each job's high-water mark: its latest slot an owner has taken (see `marks`).
    "CREATE TABLE tickd_marks (
        cluster text NOT NULL,
        job text NOT NULL,
        slot timestamptz NOT NULL,
        epoch bigint NOT NULL,
        PRIMARY KEY (cluster, job)
    )",
    // 3: the latest slot of each job whose run finished, for `on_node_loss = "rerun"`; `NULL`
    // (unknown) in rows from before.
    "ALTER TABLE tickd_marks ADD COLUMN finished timestamptz",
    // 4: shards: one ownership row per shard (the one row of before is shard 0), the epoch it
    // had before its last takeover (whose window may still take its slots), and the live nodes.
    "ALTER TABLE tickd_owner ADD COLUMN shard integer NOT NULL DEFAULT 0;
     ALTER TABLE tickd_owner ADD COLUMN previous_epoch bigint NOT NULL DEFAULT 0;
     ALTER TABLE tickd_owner DROP CONSTRAINT tickd_owner_pkey;
     ALTER TABLE tickd_owner ADD PRIMARY KEY (cluster, shard);
     CREATE TABLE tickd_nodes (
        cluster text NOT NULL,
        node text NOT NULL,
        weight integer NOT NULL,
        jobs_hash text NOT NULL,
        seen_at timestamptz NOT NULL,
        PRIMARY KEY (cluster, node)
     )",
];

/// Why the schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum SchemaError {
    /// The database refused a statement.
    #[error("{0}")]
    Database(#[from] tokio_postgres::Error),
    /// A newer tickd migrated the database.
    #[error("the database's tickd schema is version {found}, newer than this tickd's ({VERSION}): upgrade this node")]
    Newer {
        /// The version found.
        found: i32,
    },
}

/// Brings the schema to [`VERSION`].
pub(super) async fn migrate(client: &mut Client) -> Result<(), SchemaError> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS tickd_schema (version integer NOT NULL);
             INSERT INTO tickd_schema SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM tickd_schema);",
        )
        .await?;
    let found: i32 = transaction
        .query_one("SELECT version FROM tickd_schema", &[])
        .await?
        .get(0);
    if found > VERSION {
        return Err(SchemaError::Newer { found });
    }
    for (index, statements) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        transaction.batch_execute(statements).await?;
        let version = i32::try_from(index + 1).unwrap_or(VERSION);
        transaction
            .execute("UPDATE tickd_schema SET version = $1", &[&version])
            .await?;
        tracing::info!(version, "cluster: database schema upgraded");
    }
    transaction.commit().await?;
    Ok(())
}
