-- Q21: add channel id (CASE + regexp)
-- RisingWave's version uses (regexp_match(url, '(&|^)channel_id=([^&]*)'))[2]; sqlstream
-- refuses it at CREATE MATERIALIZED VIEW: "Catalog Error: Scalar Function with name
-- regexp_match does not exist!". regexp_extract(url, pattern, 2) does not work either: the
-- Postgres-dialect transpiler reads the third argument as a position (the view returned
-- '&channel_id=...', group 0). The view therefore uses regexp_replace with a back-reference,
-- NULL when the url has no channel_id (regexp_replace then returns the url unchanged).
CREATE MATERIALIZED VIEW nexmark_q21 AS
SELECT auction, bidder, price, channel,
  CASE
    WHEN lower(channel) = 'apple' THEN '0'
    WHEN lower(channel) = 'google' THEN '1'
    WHEN lower(channel) = 'facebook' THEN '2'
    WHEN lower(channel) = 'baidu' THEN '3'
    ELSE nullif(regexp_replace(url, '^.*(&|^)channel_id=([^&]*).*$', '\2'), url)
  END AS channel_id
FROM bid
WHERE nullif(regexp_replace(url, '^.*(&|^)channel_id=([^&]*).*$', '\2'), url) IS NOT NULL
   OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu');
-- batch:
SELECT auction, bidder, price, channel,
  CASE
    WHEN lower(channel) = 'apple' THEN '0'
    WHEN lower(channel) = 'google' THEN '1'
    WHEN lower(channel) = 'facebook' THEN '2'
    WHEN lower(channel) = 'baidu' THEN '3'
    ELSE nullif(regexp_extract(url, '(&|^)channel_id=([^&]*)', 2), '')
  END AS channel_id
FROM bid
WHERE nullif(regexp_extract(url, '(&|^)channel_id=([^&]*)', 2), '') IS NOT NULL
   OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu');
