//! Mappings: which OTLP records become rows of which table, and where each column's value
//! comes from. Built-in mappings (`builtin.toml`) and user mappings share one format and one
//! compiler, which validates table and column names so they can be quoted safely into DDL.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use tokio_postgres::types::Type;

use super::config::TimescaleSinkConfig;

/// The kind of record a mapping selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A span; its name is the span name.
    Span,
    /// An event inside a span; its name is the event name. `span:<key>` reads the enclosing span.
    SpanEvent,
    /// A log record; its name is the event name (`event_name`, or the `event.name` attribute).
    Log,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Span => "span",
            RecordKind::SpanEvent => "span_event",
            RecordKind::Log => "log",
        }
    }
}

/// A column's PostgreSQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Timestamptz,
    Text,
    Int8,
    Float8,
    Bool,
    Uuid,
    Jsonb,
    Bytea,
}

impl ColumnType {
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Text => "text",
            ColumnType::Int8 => "int8",
            ColumnType::Float8 => "float8",
            ColumnType::Bool => "bool",
            ColumnType::Uuid => "uuid",
            ColumnType::Jsonb => "jsonb",
            ColumnType::Bytea => "bytea",
        }
    }

    pub fn pg_type(self) -> Type {
        match self {
            ColumnType::Timestamptz => Type::TIMESTAMPTZ,
            ColumnType::Text => Type::TEXT,
            ColumnType::Int8 => Type::INT8,
            ColumnType::Float8 => Type::FLOAT8,
            ColumnType::Bool => Type::BOOL,
            ColumnType::Uuid => Type::UUID,
            ColumnType::Jsonb => Type::JSONB,
            ColumnType::Bytea => Type::BYTEA,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// One column of a user mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Column name: lower-case letters, digits and `_`, starting with a letter or `_`.
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Where the value comes from; with a list, the first source present wins.
    /// `attribute:<key>`, `span:<key>` (the enclosing span of an event), `resource:<key>`,
    /// `field:<name>` (time, end_time, duration_ms, trace_id, span_id, parent_span_id, name,
    /// kind, status, status_message, status_error, severity_number, severity_text, body,
    /// service_name, scope_name), `computed:cost_usd`.
    from: OneOrMany,
    /// A record without a value for this column is rejected (kept in `otelgate_rejected_rows`).
    #[serde(default)]
    pub required: bool,
}

/// A user mapping, as written in the config file under `[[timescale.mappings]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Target table; created at start-up if missing (a hypertable with TimescaleDB).
    pub table: String,
    /// `span`, `span_event` or `log`.
    pub record: RecordKind,
    /// Select only records with this exact name.
    #[serde(default)]
    pub name: Option<String>,
    /// Select only records whose attributes have these values (compared as text).
    #[serde(default, rename = "where")]
    pub where_equal: BTreeMap<String, String>,
    /// Select only records carrying at least one of these attributes.
    #[serde(default)]
    pub has_any: Vec<String>,
    #[serde(default)]
    pub columns: Vec<ColumnConfig>,
}

/// A record field usable as a column source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Time,
    EndTime,
    DurationMs,
    TraceId,
    SpanId,
    ParentSpanId,
    Name,
    Kind,
    Status,
    StatusMessage,
    StatusError,
    SeverityNumber,
    SeverityText,
    Body,
    ServiceName,
    ScopeName,
}

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Attribute(String),
    Span(String),
    Resource(String),
    Field(Field),
    CostUsd,
}

/// A compiled column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub sources: Vec<Source>,
    pub required: bool,
}

/// A compiled, validated mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// What the ledger knows this mapping by across restarts: `<table>/<record>/<name>`
    /// (`*` for no name), with `#2`, `#3`... for later mappings that share all three.
    pub ledger_id: String,
    /// A checksum of the mapping's whole definition. Rows are numbered per mapping within a
    /// log record, and a changed definition can number them differently, so ledger ranges
    /// carry it and a replay treats ranges of another definition by record, not by row.
    pub fingerprint: u32,
    pub table: String,
    pub record: RecordKind,
    pub name: Option<String>,
    pub where_equal: Vec<(String, String)>,
    pub has_any: Vec<String>,
    /// The mapping's own columns (the standard ones are implied, see [`STANDARD_COLUMNS`]).
    pub columns: Vec<Column>,
    /// Record attributes read by some column, each once: left out of the `attributes`
    /// column. A list, not a set: it is short and checked for every attribute of every row,
    /// and comparing lengths first rejects most keys without comparing their bytes.
    pub consumed: Vec<String>,
}

/// Columns every mapped table has, in this order, before the mapping's own columns.
pub const STANDARD_COLUMNS: [(&str, ColumnType); 5] = [
    ("time", ColumnType::Timestamptz),
    ("trace_id", ColumnType::Bytea),
    ("span_id", ColumnType::Bytea),
    ("service_name", ColumnType::Text),
    ("attributes", ColumnType::Jsonb),
];

const RESERVED: [&str; 6] = [
    "time",
    "trace_id",
    "span_id",
    "service_name",
    "attributes",
    "ingested_at",
];

#[derive(Deserialize)]
struct Builtin {
    mappings: Vec<MappingConfig>,
}

fn builtin() -> Vec<MappingConfig> {
    toml::from_str::<Builtin>(include_str!("builtin.toml"))
        .expect("builtin.toml is valid (checked by tests)")
        .mappings
}

/// Names of the tables the built-in mappings write.
pub const BUILTIN_TABLES: [&str; 3] = ["frame_metadata", "detection_events", "llm_requests"];

/// Checks a SQL identifier we create: it is then safe to quote into DDL.
pub fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
        && !name.starts_with("pg_")
}

/// Tables of otelgate's own bookkeeping; mappings may not write them.
const INTERNAL_PREFIX: &str = "otelgate_";

fn parse_source(text: &str) -> Result<Source, String> {
    let (kind, rest) = text
        .split_once(':')
        .ok_or_else(|| format!("source `{text}` must look like `attribute:<key>`"))?;
    let field = |name: &str| {
        Field::from_name(name).ok_or_else(|| format!("unknown field `{name}` in `{text}`"))
    };
    match kind {
        "attribute" if !rest.is_empty() => Ok(Source::Attribute(rest.into())),
        "span" if !rest.is_empty() => Ok(Source::Span(rest.into())),
        "resource" if !rest.is_empty() => Ok(Source::Resource(rest.into())),
        "field" => field(rest).map(Source::Field),
        "computed" if rest == "cost_usd" => Ok(Source::CostUsd),
        _ => Err(format!(
            "source `{text}`: use attribute:, span:, resource:, field: or computed:cost_usd"
        )),
    }
}

impl Field {
    fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "time" => Field::Time,
            "end_time" => Field::EndTime,
            "duration_ms" => Field::DurationMs,
            "trace_id" => Field::TraceId,
            "span_id" => Field::SpanId,
            "parent_span_id" => Field::ParentSpanId,
            "name" => Field::Name,
            "kind" => Field::Kind,
            "status" => Field::Status,
            "status_message" => Field::StatusMessage,
            "status_error" => Field::StatusError,
            "severity_number" => Field::SeverityNumber,
            "severity_text" => Field::SeverityText,
            "body" => Field::Body,
            "service_name" => Field::ServiceName,
            "scope_name" => Field::ScopeName,
            _ => return None,
        })
    }
}

fn compile_one(config: &MappingConfig) -> Result<Mapping, String> {
    let table = &config.table;
    if table.starts_with(INTERNAL_PREFIX) {
        return Err(format!(
            "table `{table}`: names starting with {INTERNAL_PREFIX} are otelgate's own"
        ));
    }
    if !valid_identifier(table) {
        return Err(format!(
            "table `{table}`: use lower-case letters, digits and `_` (at most 63, not starting with pg_)"
        ));
    }
    let mut seen = BTreeSet::new();
    let mut columns = Vec::new();
    let mut consumed: Vec<String> = Vec::new();
    for column in &config.columns {
        let name = &column.name;
        if !valid_identifier(name) || RESERVED.contains(&name.as_str()) {
            return Err(format!(
                "table `{table}`, column `{name}`: invalid or reserved name (reserved: {})",
                RESERVED.join(", ")
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(format!("table `{table}`: column `{name}` appears twice"));
        }
        let texts = match &column.from {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        };
        if texts.is_empty() {
            return Err(format!("table `{table}`, column `{name}`: `from` is empty"));
        }
        let sources = texts
            .iter()
            .map(|t| parse_source(t).map_err(|e| format!("table `{table}`, column `{name}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        for source in &sources {
            match source {
                Source::Attribute(key) if !consumed.contains(key) => consumed.push(key.clone()),
                _ => {}
            }
        }
        columns.push(Column {
            name: name.clone(),
            ty: column.ty,
            sources,
            required: column.required,
        });
    }
    Ok(Mapping {
        ledger_id: format!(
            "{table}/{}/{}",
            config.record.as_str(),
            config.name.as_deref().unwrap_or("*")
        ),
        fingerprint: crc32fast::hash(format!("{config:?}").as_bytes()),
        table: table.clone(),
        record: config.record,
        name: config.name.clone(),
        where_equal: config.where_equal.clone().into_iter().collect(),
        has_any: config.has_any.clone(),
        columns,
        consumed,
    })
}

/// Compiles the built-in (if enabled) and user mappings. Mappings of one table must agree on
/// every column's type; their column lists are merged into the table's.
pub fn compile(config: &TimescaleSinkConfig) -> Result<Vec<Mapping>, String> {
    let mut all = Vec::new();
    if config.builtin_mappings {
        all.extend(builtin());
    }
    all.extend(config.mappings.iter().cloned());
    let mut mappings = all.iter().map(compile_one).collect::<Result<Vec<_>, _>>()?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for mapping in &mut mappings {
        let count = seen.entry(mapping.ledger_id.clone()).or_default();
        *count += 1;
        if *count > 1 {
            mapping.ledger_id = format!("{}#{count}", mapping.ledger_id);
        }
    }
    let mut types: BTreeMap<(&str, &str), ColumnType> = BTreeMap::new();
    for mapping in &mappings {
        for column in &mapping.columns {
            let previous = types.insert((&mapping.table, &column.name), column.ty);
            if previous.is_some_and(|p| p != column.ty) {
                return Err(format!(
                    "table `{}`, column `{}`: mappings disagree on its type",
                    mapping.table, column.name
                ));
            }
        }
    }
    Ok(mappings)
}

/// The columns one mapping writes, in row order: the standard columns, then its own.
pub fn mapping_columns(mapping: &Mapping) -> Vec<(String, ColumnType)> {
    STANDARD_COLUMNS
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .chain(mapping.columns.iter().map(|c| (c.name.clone(), c.ty)))
        .collect()
}

/// Every table with its columns (standard columns first, then each mapping's, first mention
/// wins), for DDL.
pub fn tables(mappings: &[Mapping]) -> BTreeMap<String, Vec<(String, ColumnType)>> {
    let mut tables: BTreeMap<String, Vec<(String, ColumnType)>> = BTreeMap::new();
    for mapping in mappings {
        let columns = tables.entry(mapping.table.clone()).or_insert_with(|| {
            STANDARD_COLUMNS
                .iter()
                .map(|(n, t)| (n.to_string(), *t))
                .collect()
        });
        for column in &mapping.columns {
            if !columns.iter().any(|(n, _)| n == &column.name) {
                columns.push((column.name.clone(), column.ty));
            }
        }
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_mappings_compile() {
        let config = TimescaleSinkConfig::new("postgres://localhost/x");
        let mappings = compile(&config).unwrap();
        let tables = tables(&mappings);
        assert_eq!(tables.keys().map(String::as_str).collect::<Vec<_>>(), {
            let mut t = BUILTIN_TABLES.to_vec();
            t.sort();
            t
        });
        let frames = &tables["frame_metadata"];
        assert_eq!(frames[0], ("time".to_string(), ColumnType::Timestamptz));
        assert!(frames
            .iter()
            .any(|(n, t)| n == "processing_ms" && *t == ColumnType::Float8));
    }

    #[test]
    fn bad_user_mappings_are_explained() {
        let cases = [
            (
                r#"table = "Bad-Name"
record = "span""#,
                "Bad-Name",
            ),
            (
                r#"table = "t"
record = "span"
columns = [{ name = "time", type = "text", from = "attribute:x" }]"#,
                "reserved",
            ),
            (
                r#"table = "t"
record = "span"
columns = [{ name = "c", type = "text", from = "attr:x" }]"#,
                "attr:x",
            ),
            (
                r#"table = "t"
record = "span"
columns = [{ name = "c", type = "text", from = "field:nope" }]"#,
                "nope",
            ),
            (
                r#"table = "frame_metadata"
record = "span"
columns = [{ name = "camera_id", type = "int8", from = "attribute:x" }]"#,
                "disagree",
            ),
        ];
        for (text, expected) in cases {
            let mut config = TimescaleSinkConfig::new("postgres://localhost/x");
            config.mappings = vec![toml::from_str(text).unwrap()];
            let err = compile(&config).unwrap_err();
            assert!(err.contains(expected), "{expected} not in {err}");
        }
    }
}
