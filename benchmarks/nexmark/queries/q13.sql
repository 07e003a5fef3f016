-- Q13: bounded side input join. The side input (a file in Flink/RisingWave) is a sqlstream
-- table filled before the run, joined as a processing-time lookup; 10 keys (mod 10) so the
-- runner need not ship a file. The table is filled before any bid is processed, so the
-- result equals a plain join (the batch formulation).
CREATE TABLE side_input (key BIGINT PRIMARY KEY, value VARCHAR);
INSERT INTO side_input VALUES (0, 'value-0'), (1, 'value-1'), (2, 'value-2'), (3, 'value-3'), (4, 'value-4'), (5, 'value-5'), (6, 'value-6'), (7, 'value-7'), (8, 'value-8'), (9, 'value-9');
CREATE MATERIALIZED VIEW nexmark_q13 AS
SELECT B.auction, B.bidder, B.price, B.date_time, S.value
FROM bid B
JOIN side_input FOR SYSTEM_TIME AS OF PROCTIME() AS S ON mod(B.auction, 10) = S.key;
-- batch:
WITH side_input(key, value) AS (VALUES (0, 'value-0'), (1, 'value-1'), (2, 'value-2'), (3, 'value-3'), (4, 'value-4'), (5, 'value-5'), (6, 'value-6'), (7, 'value-7'), (8, 'value-8'), (9, 'value-9'))
SELECT B.auction, B.bidder, B.price, B.date_time, S.value
FROM bid B JOIN side_input AS S ON mod(B.auction, 10) = S.key;
