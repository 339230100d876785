-- otelgate: plain
-- Without TimescaleDB the aggregates are plain views of the same names and columns,
-- bucketed in UTC like time_bucket.

CREATE OR REPLACE VIEW frames_per_camera_hourly AS
    SELECT date_trunc('hour', time, 'UTC') AS bucket, camera_id,
           count(*) AS frames, avg(processing_ms) AS avg_processing_ms, max(processing_ms) AS max_processing_ms
    FROM frame_metadata
    GROUP BY 1, camera_id;

CREATE OR REPLACE VIEW frames_per_camera_daily AS
    SELECT date_trunc('day', time, 'UTC') AS bucket, camera_id,
           count(*) AS frames, avg(processing_ms) AS avg_processing_ms, max(processing_ms) AS max_processing_ms
    FROM frame_metadata
    GROUP BY 1, camera_id;

CREATE OR REPLACE VIEW detections_per_camera_hourly AS
    SELECT date_trunc('hour', time, 'UTC') AS bucket, camera_id,
           count(*) AS detections, avg(confidence) AS mean_confidence
    FROM detection_events
    GROUP BY 1, camera_id;

CREATE OR REPLACE VIEW detections_per_camera_daily AS
    SELECT date_trunc('day', time, 'UTC') AS bucket, camera_id,
           count(*) AS detections, avg(confidence) AS mean_confidence
    FROM detection_events
    GROUP BY 1, camera_id;

CREATE OR REPLACE VIEW detections_per_class_hourly AS
    SELECT date_trunc('hour', time, 'UTC') AS bucket, object_class,
           count(*) AS detections, avg(confidence) AS mean_confidence
    FROM detection_events
    GROUP BY 1, object_class;

CREATE OR REPLACE VIEW llm_usage_hourly AS
    SELECT date_trunc('hour', time, 'UTC') AS bucket, request_model,
           count(*) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd, avg(duration_ms) AS avg_duration_ms, avg(CASE WHEN error_type IS NULL THEN 0.0 ELSE 1.0 END) AS error_rate
    FROM llm_requests
    GROUP BY 1, request_model;

CREATE OR REPLACE VIEW llm_usage_daily AS
    SELECT date_trunc('day', time, 'UTC') AS bucket, request_model,
           count(*) AS requests, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd, avg(duration_ms) AS avg_duration_ms, avg(CASE WHEN error_type IS NULL THEN 0.0 ELSE 1.0 END) AS error_rate
    FROM llm_requests
    GROUP BY 1, request_model;
