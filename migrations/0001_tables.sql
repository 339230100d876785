-- otelgate: all
-- The built-in tables, the batch ledger and the rejected-rows table. Plain PostgreSQL;
-- TimescaleDB features are added by the migrations marked `timescaledb`.

CREATE TABLE IF NOT EXISTS otelgate_ledger (
    batch_id     uuid PRIMARY KEY,
    table_name   text NOT NULL,
    row_count    int8 NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS otelgate_ledger_committed_at ON otelgate_ledger (committed_at);

CREATE TABLE IF NOT EXISTS otelgate_rejected_rows (
    time        timestamptz NOT NULL,
    table_name  text NOT NULL,
    reason      text NOT NULL,
    record      jsonb,
    ingested_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS otelgate_rejected_rows_time ON otelgate_rejected_rows (table_name, time DESC);

CREATE TABLE IF NOT EXISTS frame_metadata (
    time          timestamptz NOT NULL,
    trace_id      bytea,
    span_id       bytea,
    service_name  text,
    attributes    jsonb,
    camera_id     text,
    frame_id      text,
    sequence      int8,
    width         int8,
    height        int8,
    processing_ms float8,
    status        text,
    ingested_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS frame_metadata_camera_time ON frame_metadata (camera_id, time DESC);
CREATE INDEX IF NOT EXISTS frame_metadata_time ON frame_metadata (time DESC);

CREATE TABLE IF NOT EXISTS detection_events (
    time         timestamptz NOT NULL,
    trace_id     bytea,
    span_id      bytea,
    service_name text,
    attributes   jsonb,
    camera_id    text,
    frame_id     text,
    object_class text,
    confidence   float8,
    bbox_x       float8,
    bbox_y       float8,
    bbox_w       float8,
    bbox_h       float8,
    track_id     int8,
    ingested_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS detection_events_camera_time ON detection_events (camera_id, time DESC);
CREATE INDEX IF NOT EXISTS detection_events_class_time ON detection_events (object_class, time DESC);

CREATE TABLE IF NOT EXISTS llm_requests (
    time           timestamptz NOT NULL,
    trace_id       bytea,
    span_id        bytea,
    service_name   text,
    attributes     jsonb,
    provider       text,
    operation      text,
    request_model  text,
    response_model text,
    input_tokens   int8,
    output_tokens  int8,
    duration_ms    float8,
    error_type     text,
    cost_usd       float8,
    ingested_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS llm_requests_model_time ON llm_requests (request_model, time DESC);
