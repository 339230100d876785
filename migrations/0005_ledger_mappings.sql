-- otelgate: all
-- Rows are numbered per mapping within a log record, and two mappings may fill one table (the
-- built-in span and log mappings both fill frame_metadata), so a ledger range only means
-- something for the mapping that wrote it. `mapping` is the mapping's ledger id
-- (`<table>/<record>/<name>`), `mapping_fingerprint` a checksum of its definition: ranges of
-- another definition (or of rows from before this migration, where both are NULL) are
-- trusted by record, not by row, on replay.

ALTER TABLE otelgate_ledger
    ADD COLUMN IF NOT EXISTS mapping             text,
    ADD COLUMN IF NOT EXISTS mapping_fingerprint int8;
