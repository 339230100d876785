-- otelgate: all
-- With the durable log on, each ledger row also records which rows of the log it covers:
-- the rows a mapping extracted from log records first_seq..last_seq, from row first_row of
-- the first record to row last_row of the last (both inclusive). After a crash the sink
-- reads the ledger and skips rows already committed, so a replay writes each row once.

ALTER TABLE otelgate_ledger
    ADD COLUMN IF NOT EXISTS log_id    uuid,
    ADD COLUMN IF NOT EXISTS first_seq int8,
    ADD COLUMN IF NOT EXISTS first_row int4,
    ADD COLUMN IF NOT EXISTS last_seq  int8,
    ADD COLUMN IF NOT EXISTS last_row  int4;
CREATE INDEX IF NOT EXISTS otelgate_ledger_log_position
    ON otelgate_ledger (log_id, last_seq) WHERE log_id IS NOT NULL;
