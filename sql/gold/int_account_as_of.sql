-- paylake: materialized=temporary
-- Each payment's source and destination account as known at the payment: the latest snapshot
-- known at or before its timestamp (bound known_at <= timestamp). One stream per account holds
-- its snapshots and its lookups; a snapshot sorts before a lookup at the same instant, and among
-- snapshots at the same instant the later file wins. `carry_forward` fills each lookup from the
-- latest snapshot before it in one pass.
WITH account_stream AS (
    SELECT account_id, ts AS at, 1 AS kind, '' AS tiebreak, payment_id, role,
        CAST(NULL AS DATE) AS opening_date, CAST(NULL AS TIMESTAMP) AS known_at
    FROM gold.int_training_lookups
    UNION ALL
    SELECT h.account_id, h.known_at AS at, 0 AS kind, h.snapshot_file AS tiebreak,
        CAST(NULL AS VARCHAR) AS payment_id, CAST(NULL AS VARCHAR) AS role, h.opening_date,
        CAST(h.known_at AS TIMESTAMP) AS known_at
    FROM params.run AS params
    CROSS JOIN silver.accounts_history AS h
    WHERE h.known_at <= params.as_of
),
filled AS (
    SELECT payment_id, role, kind,
        carry_forward(opening_date, known_at) OVER latest AS opening_date,
        carry_forward(known_at, known_at) OVER latest AS known_at
    FROM account_stream
    WINDOW latest AS (PARTITION BY account_id ORDER BY at, kind, tiebreak)
)
SELECT payment_id,
    max(CASE WHEN role = 'src' THEN opening_date END) AS src_opening_date,
    max(CASE WHEN role = 'src' THEN known_at END) AS src_account_known_at,
    max(CASE WHEN role = 'dest' THEN opening_date END) AS dest_opening_date,
    max(CASE WHEN role = 'dest' THEN known_at END) AS dest_account_known_at
FROM filled
WHERE kind = 1
GROUP BY payment_id
