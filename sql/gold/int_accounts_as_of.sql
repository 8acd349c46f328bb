-- paylake: materialized=temporary
-- Each payment's source and destination account, and their risk flags, as known at the
-- payment: the latest account snapshot and the latest risk batch that mentions the account,
-- known at or before its timestamp (bound known_at <= timestamp; a later 0 clears an earlier
-- flag). One stream per account holds its lookups (one per payment and side, `is_src`), its snapshots and
-- its risk batches. A fact sorts before a lookup at the same instant, and among facts at the
-- same instant the later file wins. `carry_forward` fills each lookup from the latest snapshot
-- and the latest risk batch before it, in one pass; each reads only its own kind of fact.
WITH lookups AS (
    SELECT payment_id, true AS is_src, src_account_id AS account_id, ts
    FROM gold.int_training_payments
    UNION ALL
    SELECT payment_id, false AS is_src, dest_account_id AS account_id, ts
    FROM gold.int_training_payments
),
account_stream AS (
    SELECT account_id, ts AS at, 1 AS kind, '' AS tiebreak, payment_id, is_src,
        CAST(NULL AS DATE) AS opening_date, CAST(NULL AS TIMESTAMP) AS account_known_at,
        CAST(NULL AS INT) AS risk_flag, CAST(NULL AS TIMESTAMP) AS risk_known_at
    FROM lookups
    UNION ALL
    SELECT h.account_id, h.known_at AS at, 0 AS kind, h.snapshot_file AS tiebreak,
        CAST(NULL AS VARCHAR) AS payment_id, CAST(NULL AS BOOLEAN) AS is_src, h.opening_date,
        CAST(h.known_at AS TIMESTAMP) AS account_known_at, CAST(NULL AS INT) AS risk_flag,
        CAST(NULL AS TIMESTAMP) AS risk_known_at
    FROM params.run AS params
    CROSS JOIN silver.accounts_history AS h
    WHERE h.known_at <= params.as_of
    UNION ALL
    SELECT r.account_id, r.known_at AS at, 0 AS kind, r.batch_file AS tiebreak,
        CAST(NULL AS VARCHAR) AS payment_id, CAST(NULL AS BOOLEAN) AS is_src,
        CAST(NULL AS DATE) AS opening_date, CAST(NULL AS TIMESTAMP) AS account_known_at,
        r.risk_flag, CAST(r.known_at AS TIMESTAMP) AS risk_known_at
    FROM params.run AS params
    CROSS JOIN silver.risk_feed_history AS r
    WHERE r.known_at <= params.as_of
),
filled AS (
    SELECT payment_id, is_src, kind,
        carry_forward(opening_date, account_known_at) OVER latest AS opening_date,
        carry_forward(account_known_at, account_known_at) OVER latest AS account_known_at,
        carry_forward(risk_flag, risk_known_at) OVER latest AS risk_flag,
        carry_forward(risk_known_at, risk_known_at) OVER latest AS risk_known_at
    FROM account_stream
    WINDOW latest AS (PARTITION BY account_id ORDER BY at, kind, tiebreak)
)
SELECT payment_id,
    max(CASE WHEN is_src THEN opening_date END) AS src_opening_date,
    max(CASE WHEN is_src THEN account_known_at END) AS src_account_known_at,
    max(CASE WHEN is_src THEN risk_flag END) AS src_risk_flag,
    max(CASE WHEN is_src THEN risk_known_at END) AS src_risk_known_at,
    max(CASE WHEN NOT is_src THEN opening_date END) AS dest_opening_date,
    max(CASE WHEN NOT is_src THEN account_known_at END) AS dest_account_known_at,
    max(CASE WHEN NOT is_src THEN risk_flag END) AS dest_risk_flag,
    max(CASE WHEN NOT is_src THEN risk_known_at END) AS dest_risk_known_at
FROM filled
WHERE kind = 1
GROUP BY payment_id
