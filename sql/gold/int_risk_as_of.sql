-- paylake: materialized=temporary
-- Each payment's source and destination risk flag as known at the payment: the latest risk
-- batch known at or before its timestamp that mentions the account (a later 0 clears an
-- earlier flag). The same stream as gold.int_account_as_of, over risk batches.
WITH risk_stream AS (
    SELECT account_id, ts AS at, 1 AS kind, '' AS tiebreak, payment_id, role,
        CAST(NULL AS INT) AS risk_flag, CAST(NULL AS TIMESTAMP) AS known_at
    FROM gold.int_training_lookups
    UNION ALL
    SELECT r.account_id, r.known_at AS at, 0 AS kind, r.batch_file AS tiebreak,
        CAST(NULL AS VARCHAR) AS payment_id, CAST(NULL AS VARCHAR) AS role, r.risk_flag,
        CAST(r.known_at AS TIMESTAMP) AS known_at
    FROM params.run AS params
    CROSS JOIN silver.risk_feed_history AS r
    WHERE r.known_at <= params.as_of
),
filled AS (
    SELECT payment_id, role, kind,
        carry_forward(risk_flag, known_at) OVER latest AS risk_flag,
        carry_forward(known_at, known_at) OVER latest AS known_at
    FROM risk_stream
    WINDOW latest AS (PARTITION BY account_id ORDER BY at, kind, tiebreak)
)
SELECT payment_id,
    max(CASE WHEN role = 'src' THEN risk_flag END) AS src_risk_flag,
    max(CASE WHEN role = 'src' THEN known_at END) AS src_risk_known_at,
    max(CASE WHEN role = 'dest' THEN risk_flag END) AS dest_risk_flag,
    max(CASE WHEN role = 'dest' THEN known_at END) AS dest_risk_known_at
FROM filled
WHERE kind = 1
GROUP BY payment_id
