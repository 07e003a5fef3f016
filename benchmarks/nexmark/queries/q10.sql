-- Q10: log to file system (stateless; the sink is replaced by a view)
-- RisingWave writes TO_CHAR(date_time, 'HH12:MI'); sqlstream's transpiler (sqlglot) leaves Postgres'
-- 'HH' untranslated (the view got the literal text 'HH:00'), so the equivalent 'HH12:MI' is used.
CREATE MATERIALIZED VIEW nexmark_q10 AS
SELECT auction, bidder, price, date_time,
       TO_CHAR(date_time, 'YYYY-MM-DD') AS date, TO_CHAR(date_time, 'HH12:MI') AS time
FROM bid;
-- batch:
SELECT auction, bidder, price, date_time,
       strftime(date_time, '%Y-%m-%d') AS date, strftime(date_time, '%I:%M') AS time
FROM bid;
