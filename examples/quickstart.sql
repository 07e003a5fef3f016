-- Quick start: generated orders -> revenue per category per second -> console and Parquet.
-- Runs with nothing installed but sqlstream:  sqlstream run examples/quickstart.sql

CREATE SOURCE orders (
    order_id    BIGINT,
    customer_id BIGINT,
    category    VARCHAR,
    amount      DOUBLE PRECISION,
    ts          TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1 second'
) WITH (
    connector = 'datagen',
    datagen.rows.per.second = '200000',
    datagen.rows.total = '1000000',
    datagen.seed = '42',
    fields.order_id.kind = 'sequence',
    fields.customer_id.min = '1',
    fields.customer_id.max = '10000',
    fields.category.values = 'books,games,music,garden,tools',
    fields.amount.min = '1',
    fields.amount.max = '500'
);

-- One row per category and second of event time, emitted once when the second is over.
CREATE MATERIALIZED VIEW revenue_per_second AS
SELECT window_start, category, count(*) AS orders, sum(amount) AS revenue, max(amount) AS biggest
FROM TUMBLE(orders, ts, INTERVAL '1 second')
GROUP BY window_start, category
EMIT ON WINDOW CLOSE;

CREATE SINK revenue_console FROM revenue_per_second WITH (connector = 'console');

CREATE SINK revenue_files FROM revenue_per_second
WITH (connector = 'file', path = 'out/revenue') FORMAT PLAIN ENCODE PARQUET;
