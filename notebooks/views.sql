-- bulkscribe's four tables (and the evaluation results) as duckdb views.
--
--   duckdb -cmd "SET VARIABLE out = './out'" -init notebooks/views.sql
--   (Python: con.execute("SET VARIABLE out = ?", [out]); con.execute(open("notebooks/views.sql").read()))
--
-- OUT may be a local folder or s3://bucket/prefix (duckdb's httpfs extension and its
-- S3 settings then). A table needs at least one part for its view to be created.
-- The views glob the parts: while `bulkscribe compact` runs (between its commit and the
-- removal of the small parts) they can see rows twice; the notebook and the CLI list
-- parts through the compaction log instead and never do (see tasks/compaction_log.py).

CREATE OR REPLACE VIEW transcripts_all AS
    SELECT * FROM read_parquet(getvariable('out') || '/transcripts/**/*.parquet', union_by_name = true);
CREATE OR REPLACE VIEW failures AS
    SELECT * FROM read_parquet(getvariable('out') || '/failures/**/*.parquet', union_by_name = true);
CREATE OR REPLACE VIEW words_all AS
    SELECT * FROM read_parquet(getvariable('out') || '/words/**/*.parquet', union_by_name = true);
CREATE OR REPLACE VIEW segments_all AS
    SELECT * FROM read_parquet(getvariable('out') || '/segments/**/*.parquet', union_by_name = true);

-- The latest transcript per (source, model), and the words and turns of that transcript:
-- what the analyses count (a file transcribed again, after a change or by another model,
-- has older rows too).
CREATE OR REPLACE VIEW transcripts AS
    SELECT * FROM transcripts_all WHERE status = 'ok'
    QUALIFY row_number() OVER (PARTITION BY source, model ORDER BY transcribed_at DESC NULLS LAST) = 1;
CREATE OR REPLACE VIEW words AS
    SELECT w.* FROM words_all w SEMI JOIN transcripts t USING (source, model, fingerprint);
CREATE OR REPLACE VIEW segments AS
    SELECT s.* FROM segments_all s SEMI JOIN transcripts t USING (source, model, fingerprint);

-- The current state of failures: the latest failed attempt per (source, model), unless the
-- file was transcribed after it (`failures` is a log of every failed attempt).
CREATE OR REPLACE VIEW open_failures AS
    SELECT f.* FROM (
        SELECT * FROM failures
        QUALIFY row_number() OVER (PARTITION BY source, model ORDER BY failed_at DESC NULLS LAST) = 1
    ) f
    LEFT JOIN transcripts t USING (source, model)
    WHERE t.transcribed_at IS NULL OR t.transcribed_at < f.failed_at;
