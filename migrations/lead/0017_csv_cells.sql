-- ExportLeads ALL has Postgres write the rows of its CSV (`COPY (SELECT ...) TO STDOUT`), so
-- they leave as Postgres formats them instead of being decoded and written again by the service.
-- These are the cells that need more than a cast; each is one SQL expression the planner
-- inlines. `lead::export` writes the first chunk's cells the same way in Rust. A cell with
-- nothing in it is NULL, which CSV writes as nothing.

-- A cell a spreadsheet opens as text, never as a formula (OWASP, "CSV Injection"): one that
-- starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading single quote, unless
-- it is a plain number (`+14155550100`).
CREATE FUNCTION csv_cell(cell text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN cell ~ '^[-=+@\t\r]' AND cell !~ '^[-+]?[0-9]+$' THEN '''' || cell ELSE cell END
$$;

-- A lead's attributes as one compact JSON object, keys in byte order.
CREATE FUNCTION csv_attributes(attributes jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN attributes IS NULL OR attributes = '{}' THEN NULL ELSE csv_cell((
        SELECT '{' || string_agg(to_json(key)::text || ':' || to_json(value)::text, ',' ORDER BY key COLLATE "C") || '}'
        FROM jsonb_each_text(attributes))) END
$$;

-- A score's reasons joined by "; ".
CREATE FUNCTION csv_reasons(reasons jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN reasons IS NULL OR reasons = '[]' THEN NULL ELSE csv_cell((
        SELECT string_agg(reason, '; ' ORDER BY n)
        FROM jsonb_array_elements_text(reasons) WITH ORDINALITY AS r(reason, n))) END
$$;
