-- paylake: materialized=temporary
-- The payments a training table as of params.run.as_of (T) holds: timestamp <= T, known by T.
-- Read by every feature model and by gold.payment_training, computed once.
SELECT p.payment_id, p.src_account_id, p.dest_account_id, p.amount, p."timestamp" AS ts,
    p.known_at
FROM params.run AS params
CROSS JOIN silver.payments AS p
WHERE p.known_at <= params.as_of AND p."timestamp" <= params.as_of
