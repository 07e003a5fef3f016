-- Q6: average selling price by seller (average of the last 10 closing prices per seller)
CREATE MATERIALIZED VIEW nexmark_q6 AS
SELECT seller, avg(final) OVER (PARTITION BY seller ORDER BY date_time
                                ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg
FROM (
  SELECT A.id, A.seller, A.date_time, max(B.price) AS final
  FROM auction A, bid B
  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
  GROUP BY A.id, A.seller, A.date_time
) Q;
