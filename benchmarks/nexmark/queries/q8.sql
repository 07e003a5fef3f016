-- Q8: monitor new users (TUMBLE 10 s join)
CREATE MATERIALIZED VIEW nexmark_q8 AS
SELECT P.id, P.name, P.starttime
FROM (
  SELECT id, name, window_start AS starttime, window_end AS endtime
  FROM TUMBLE(person, date_time, INTERVAL '10' SECOND)
  GROUP BY id, name, window_start, window_end
) P
JOIN (
  SELECT seller, window_start AS starttime, window_end AS endtime
  FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND)
  GROUP BY seller, window_start, window_end
) A ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime;
-- batch:
SELECT P.id, P.name, P.starttime
FROM (
  SELECT id, name, time_bucket(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01') AS starttime
  FROM person GROUP BY ALL
) P
JOIN (
  SELECT seller, time_bucket(INTERVAL '10 seconds', date_time, TIMESTAMP '1970-01-01') AS starttime
  FROM auction GROUP BY ALL
) A ON P.id = A.seller AND P.starttime = A.starttime;
