-- JSON-lines files -> running totals per customer -> a Postgres table (upsert, exactly once).
-- Run from the repository root:  sqlstream run examples/orders_to_postgres.sql --once
-- New files dropped into examples/data/orders/ are picked up while the job runs.
-- One line of orders-002.jsonl is malformed on purpose: it lands in sqlstream.dead_letters.

CREATE SOURCE order_files (
    id       BIGINT,
    customer VARCHAR,
    amount   DOUBLE PRECISION,
    ts       TIMESTAMP
) WITH (connector = 'file', path = 'examples/data/orders', pattern = '*.jsonl')
FORMAT PLAIN ENCODE JSON;

CREATE MATERIALIZED VIEW customer_totals AS
SELECT customer, count(*) AS orders, sum(amount) AS total, max(ts) AS last_order
FROM order_files
GROUP BY customer;

-- No dsn: the table is written in the catalog database, in the checkpoint's transaction.
CREATE SINK customer_totals_pg FROM customer_totals
WITH (connector = 'postgres', table = 'customer_totals', type = 'upsert', primary_key = 'customer');
