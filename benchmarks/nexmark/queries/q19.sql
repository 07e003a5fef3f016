-- Q19: top 10 bids per auction. date_time is added to ORDER BY as a tie-break so the result
-- is deterministic (prices repeat) and comparable with the batch result.
CREATE MATERIALIZED VIEW nexmark_q19 AS
SELECT auction, bidder, price, channel, url, date_time, extra, rank_number
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC, date_time ASC) AS rank_number
  FROM bid
) t
WHERE rank_number <= 10;
