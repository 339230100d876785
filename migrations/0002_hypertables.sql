-- otelgate: timescaledb
-- Hypertables, columnstore compression and compression policies. Chunk intervals: a day of
-- frames and detections, a week of LLM requests (far fewer rows). Compression segments by
-- the column most queries filter on and orders by time, newest first.

SELECT create_hypertable('frame_metadata', 'time', chunk_time_interval => INTERVAL '1 day',
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('detection_events', 'time', chunk_time_interval => INTERVAL '1 day',
                         if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('llm_requests', 'time', chunk_time_interval => INTERVAL '7 days',
                         if_not_exists => TRUE, migrate_data => TRUE);

ALTER TABLE frame_metadata SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'camera_id', timescaledb.compress_orderby = 'time DESC');
ALTER TABLE detection_events SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'camera_id', timescaledb.compress_orderby = 'time DESC');
ALTER TABLE llm_requests SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'request_model', timescaledb.compress_orderby = 'time DESC');

SELECT add_compression_policy('frame_metadata', INTERVAL '2 days', if_not_exists => TRUE);
SELECT add_compression_policy('detection_events', INTERVAL '2 days', if_not_exists => TRUE);
SELECT add_compression_policy('llm_requests', INTERVAL '14 days', if_not_exists => TRUE);
