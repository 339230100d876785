-- otelgate: timescaledb
-- Continuous aggregates with real-time aggregation (recent rows are included before they are
-- materialized) and refresh policies. Plain views of the same names are dropped first, in case
-- this database ran without TimescaleDB before.

DROP VIEW IF EXISTS frames_per_camera_hourly;
CREATE MATERIALIZED VIEW IF NOT EXISTS frames_per_camera_hourly
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, camera_id,
           count(*) AS frames, avg(processing_ms) AS avg_processing_ms, max(processing_ms) AS max_processing_ms
    FROM frame_metadata
    GROUP BY bucket, camera_id
    WITH NO DATA;
SELECT add_continuous_aggregate_policy('frames_per_camera_hourly', start_offset => INTERVAL '1 day',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '5 minutes', if_not_exists => TRUE);

DROP VIEW IF EXISTS frames_per_camera_daily;
CREATE MATERIALIZED VIEW IF NOT EXISTS frames_per_camera_daily
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 day', time) AS bucket, camera_id,
           count(*) AS frames, avg(processing_ms) AS avg_processing_ms, max(processing_ms) AS max_processing_ms
    FROM frame_metadata
    GROUP BY bucket, camera_id
    WITH NO DATA;
SELECT add_continuous_aggregate_policy('frames_per_camera_daily', start_offset => INTERVAL '7 days',
    end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE);

DROP VIEW IF EXISTS detections_per_camera_hourly;
CREATE MATERIALIZED VIEW IF NOT EXISTS detections_per_camera_hourly
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, camera_id,
           count(*) AS detections, avg(confidence) AS mean_confidence
    FROM detection_events
    GROUP BY bucket, camera_id
    WITH NO DATA;
SELECT add_continuous_aggregate_policy('detections_per_camera_hourly', start_offset => INTERVAL '1 day',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '5 minutes', if_not_exists => TRUE);

DROP VIEW IF EXISTS detections_per_camera_daily;
CREATE MATERIALIZED VIEW IF NOT EXISTS detections_per_camera_daily
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 day', time) AS bucket, camera_id,
           count(*) AS detections, avg(confidence) AS mean_confidence
    FROM detection_events
    GROUP BY bucket, camera_id
    WITH NO DATA;
SELECT add_continuous_aggregate_policy('detections_per_camera_daily', start_offset => INTERVAL '7 days',
    end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE);

DROP VIEW IF EXISTS detections_per_class_hourly;
CREATE MATERIALIZED VIEW IF NOT EXISTS detections_per_class_hourly
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, object_class,
           count(*) AS detections, avg(confidence) AS mean_confidence
    FROM detection_events
    GROUP BY bucket, object_class
    WITH NO DATA;
SELECT add_continuous_aggregate_policy('detections_per_class_hourly', start_offset => INTERVAL '1 day',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '5 minutes', if_not_exists => TRUE);

DROP VIEW IF EXISTS llm_usage_hourly;
CREATE MATERIALIZED VIEW IF NOT EXISTS llm_usage_hourly
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, request_model,
           count(*) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd, avg(duration_ms) AS avg_duration_ms, avg(CASE WHEN error_type IS NULL THEN 0.0 ELSE 1.0 END) AS error_rate
    FROM llm_requests
    GROUP BY bucket, request_model
    WITH NO DATA;
SELECT add_continuous_aggregate_policy('llm_usage_hourly', start_offset => INTERVAL '1 day',
    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '5 minutes', if_not_exists => TRUE);

DROP VIEW IF EXISTS llm_usage_daily;
CREATE MATERIALIZED VIEW IF NOT EXISTS llm_usage_daily
    WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
    SELECT time_bucket(INTERVAL '1 day', time) AS bucket, request_model,
           count(*) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd, avg(duration_ms) AS avg_duration_ms, avg(CASE WHEN error_type IS NULL THEN 0.0 ELSE 1.0 END) AS error_rate
    FROM llm_requests
    GROUP BY bucket, request_model
    WITH NO DATA;
SELECT add_continuous_aggregate_policy('llm_usage_daily', start_offset => INTERVAL '7 days',
    end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE);
