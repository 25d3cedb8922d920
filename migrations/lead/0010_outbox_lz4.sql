-- Outbox rows now carry batches of lead events (tens of kilobytes of JSON), which Postgres
-- compresses on the way to TOAST; its default pglz took a twentieth of the CPU of the ingest
-- pipeline. lz4 compresses JSON about as well at a fraction of the cost. A server built
-- without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available, the outbox keeps pglz';
END
$$;
