-- Q5: hot items (HOP 2 s slide over 10 s windows)
CREATE MATERIALIZED VIEW nexmark_q5 AS
SELECT AuctionBids.auction, AuctionBids.num
FROM (
  SELECT bid.auction, count(*) AS num, window_start AS starttime
  FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
  GROUP BY window_start, bid.auction
) AS AuctionBids
JOIN (
  SELECT max(CountBids.num) AS maxn, CountBids.starttime_c
  FROM (
    SELECT count(*) AS num, window_start AS starttime_c
    FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
    GROUP BY bid.auction, window_start
  ) AS CountBids
  GROUP BY CountBids.starttime_c
) AS MaxBids
ON AuctionBids.starttime = MaxBids.starttime_c AND AuctionBids.num >= MaxBids.maxn;
-- batch:
WITH hb AS (
  SELECT b.auction, ws AS window_start
  FROM (SELECT *, unnest(generate_series(
          time_bucket(INTERVAL '2 seconds', date_time - INTERVAL '10 seconds', TIMESTAMP '1970-01-01'),
          time_bucket(INTERVAL '2 seconds', date_time, TIMESTAMP '1970-01-01'),
          INTERVAL '2 seconds')) AS ws FROM bid) b
  WHERE ws + INTERVAL '10 seconds' > date_time AND ws <= date_time
),
c AS (SELECT auction, window_start, count(*) AS num FROM hb GROUP BY ALL),
m AS (SELECT window_start, max(num) AS maxn FROM c GROUP BY ALL)
SELECT c.auction, c.num FROM c JOIN m ON c.window_start = m.window_start AND c.num >= m.maxn;
