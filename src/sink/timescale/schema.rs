//! Schema management: the SQL files under `migrations/` (embedded in the binary), applied in
//! order, each once, each in its own transaction under an advisory transaction lock (safe
//! when several gateways start together, and through PgBouncer in transaction mode). Files
//! say which databases they are for in their first line: `-- otelgate: all`, `timescaledb` or
//! `plain`. Tables of user mappings are created (and grown by new columns) from the mappings.

use tokio_postgres::{Client, Transaction};

use super::config::TimescaleSinkConfig;
use super::error::TimescaleSinkError;
use super::mapping::{self, ColumnType, Mapping, BUILTIN_TABLES};

/// Key of the advisory lock that serializes schema changes between gateways.
const MIGRATION_LOCK: i64 = 0x6f74_656c_6761_7465; // "otelgate"

const MIGRATIONS: [(&str, &str); 6] = [
    (
        "0001_tables",
        include_str!("../../../migrations/0001_tables.sql"),
    ),
    (
        "0002_hypertables",
        include_str!("../../../migrations/0002_hypertables.sql"),
    ),
    (
        "0003_aggregates_timescaledb",
        include_str!("../../../migrations/0003_aggregates_timescaledb.sql"),
    ),
    (
        "0003_aggregates_plain",
        include_str!("../../../migrations/0003_aggregates_plain.sql"),
    ),
    (
        "0004_ledger_log_positions",
        include_str!("../../../migrations/0004_ledger_log_positions.sql"),
    ),
    (
        "0005_ledger_mappings",
        include_str!("../../../migrations/0005_ledger_mappings.sql"),
    ),
];

/// What the database offers, as found by [`migrate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaInfo {
    /// TimescaleDB's version, or `None` on plain PostgreSQL.
    pub timescaledb: Option<String>,
    /// Migrations applied by this call.
    pub applied: Vec<String>,
}

impl SchemaInfo {
    /// The start-up warning for plain PostgreSQL.
    pub fn warning(&self) -> Option<&'static str> {
        self.timescaledb.is_none().then_some(
            "TimescaleDB is not installed: tables are plain tables (no hypertables, compression or retention) and aggregates are plain views",
        )
    }
}

fn target(sql: &str) -> &str {
    sql.lines()
        .next()
        .and_then(|l| l.strip_prefix("-- otelgate:"))
        .map_or("all", str::trim)
}

/// Finds or creates the TimescaleDB extension; `None` when it is not available.
async fn timescaledb(client: &Client) -> Result<Option<String>, TimescaleSinkError> {
    let installed = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'";
    // Outside a transaction, unnamed statements only (`query_typed`): PgBouncer in
    // transaction mode may run each statement on a different server connection.
    if let Some(row) = client.query_typed_opt(installed, &[]).await? {
        return Ok(Some(row.get(0)));
    }
    let available = client
        .query_typed_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await?
        .is_some();
    if !available {
        return Ok(None);
    }
    // Creating the extension without the library preloaded ends the session, so look first.
    let preloaded: String = client
        .query_typed_one("SELECT current_setting('shared_preload_libraries')", &[])
        .await?
        .get(0);
    if !preloaded.contains("timescaledb") {
        tracing::warn!(
            "TimescaleDB is installed but not in shared_preload_libraries; using plain PostgreSQL."
        );
        return Ok(None);
    }
    if let Err(error) = client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await
    {
        tracing::warn!(%error, "TimescaleDB is available but cannot be created (is it in shared_preload_libraries?).");
        return Ok(None);
    }
    Ok(client
        .query_typed_opt(installed, &[])
        .await?
        .map(|row| row.get(0)))
}

fn quote(identifier: &str) -> String {
    debug_assert!(mapping::valid_identifier(identifier));
    format!("\"{identifier}\"")
}

/// Applies pending migrations and creates or extends the tables of user mappings.
pub async fn migrate(
    client: &mut Client,
    config: &TimescaleSinkConfig,
    mappings: &[Mapping],
) -> Result<SchemaInfo, TimescaleSinkError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS otelgate_migrations (
                name text PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let timescaledb = timescaledb(client).await?;
    let variant = if timescaledb.is_some() {
        "timescaledb"
    } else {
        "plain"
    };
    let mut applied = Vec::new();
    for (name, sql) in MIGRATIONS {
        let target = target(sql);
        if target != "all" && target != variant {
            continue;
        }
        if apply_migration(client, name, sql).await? {
            tracing::info!(migration = name, "Applied migration.");
            applied.push(name.to_owned());
        }
    }
    update_mapping_tables(client, config, mappings, timescaledb.is_some()).await?;
    Ok(SchemaInfo {
        timescaledb,
        applied,
    })
}

/// Applies one migration unless the ledger says it was applied; returns whether it was.
async fn apply_migration(
    client: &mut Client,
    name: &str,
    sql: &str,
) -> Result<bool, TimescaleSinkError> {
    let fail = |source| TimescaleSinkError::Migration {
        name: name.to_owned(),
        source,
    };
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    let done = tx
        .query_opt(
            "SELECT 1 FROM otelgate_migrations WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(fail)?
        .is_some();
    if done {
        return Ok(false);
    }
    tx.batch_execute(sql).await.map_err(fail)?;
    tx.execute(
        "INSERT INTO otelgate_migrations (name) VALUES ($1)",
        &[&name],
    )
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(true)
}

/// Tables of user mappings, and columns that mappings added since the table was created;
/// on TimescaleDB, also the hypertables of those tables and the built-in tables' retention.
async fn update_mapping_tables(
    client: &mut Client,
    config: &TimescaleSinkConfig,
    mappings: &[Mapping],
    timescaledb: bool,
) -> Result<(), TimescaleSinkError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    for (table, columns) in mapping::tables(mappings) {
        tx.batch_execute(&mapping_table_ddl(&table, &columns))
            .await?;
        if timescaledb && !BUILTIN_TABLES.contains(&table.as_str()) {
            tx.execute(
                "SELECT create_hypertable($1::text::regclass, 'time', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE, migrate_data => TRUE)",
                &[&table],
            )
            .await?;
        }
    }
    if timescaledb {
        set_retention(&tx, config.retention_days).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Creates a mapping's table if missing and adds the columns it lacks.
fn mapping_table_ddl(table: &str, columns: &[(String, ColumnType)]) -> String {
    let mut ddl = format!("CREATE TABLE IF NOT EXISTS {} (", quote(table));
    for (name, ty) in columns {
        let not_null = if name == "time" { " NOT NULL" } else { "" };
        ddl.push_str(&format!("{} {}{not_null}, ", quote(name), ty.sql()));
    }
    ddl.push_str("ingested_at timestamptz NOT NULL DEFAULT clock_timestamp());");
    for (name, ty) in columns {
        ddl.push_str(&format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {};",
            quote(table),
            quote(name),
            ty.sql()
        ));
    }
    ddl
}

/// Replaces the built-in tables' retention policies: none when `retention_days` is 0.
async fn set_retention(
    tx: &Transaction<'_>,
    retention_days: u32,
) -> Result<(), TimescaleSinkError> {
    for table in BUILTIN_TABLES {
        tx.execute(
            "SELECT remove_retention_policy($1::text::regclass, if_exists => TRUE)",
            &[&table],
        )
        .await?;
        if retention_days > 0 {
            tx.execute(
                "SELECT add_retention_policy($1::text::regclass, make_interval(days => $2))",
                &[&table, &(retention_days as i32)],
            )
            .await?;
        }
    }
    Ok(())
}
