-- paylake: partition_by=payment_date datafusion.optimizer.prefer_hash_join=false
-- Point-in-time training table as of params.run.as_of (T): one row per payment with
-- timestamp <= T known by T. Every feature uses only facts known at or before the payment;
-- labels count only when known by T. Bounds are documented in docs/point-in-time.md.
-- As-of lookups are forward fills over one sorted stream per account (no ASOF JOIN, no
-- quadratic IGNORE NULLS frames): they scale as sorts do and plan the same on a cluster.
-- The one-row `params` comes first in every cross join: the engine buffers the left side and
-- emits one batch per buffered row, so a large left side would stream one-row batches.
WITH params AS (
    SELECT as_of, label_maturity_days, maturity_cutoff FROM params.run
),
payments AS (
    SELECT p.payment_id, p.src_account_id, p.dest_account_id, p.amount, p."timestamp" AS ts,
        p.known_at
    FROM params CROSS JOIN silver.payments AS p
    WHERE p.known_at <= params.as_of AND p."timestamp" <= params.as_of
),
-- Each payment looks its source and its destination account up once.
lookups AS (
    SELECT payment_id, 'src' AS role, src_account_id AS account_id, ts FROM payments
    UNION ALL
    SELECT payment_id, 'dest' AS role, dest_account_id AS account_id, ts FROM payments
),
-- Snapshots sort before a lookup at the same instant: a snapshot known at the payment's
-- timestamp is used (bound known_at <= timestamp); among equal times the later file wins.
account_stream AS (
    SELECT account_id, ts AS at, 1 AS kind, '' AS tiebreak, payment_id, role,
        CAST(NULL AS DATE) AS opening_date, CAST(NULL AS TIMESTAMP) AS known_at
    FROM lookups
    UNION ALL
    SELECT h.account_id, h.known_at AS at, 0 AS kind, h.snapshot_file AS tiebreak,
        CAST(NULL AS VARCHAR) AS payment_id, CAST(NULL AS VARCHAR) AS role, h.opening_date,
        CAST(h.known_at AS TIMESTAMP) AS known_at
    FROM params CROSS JOIN silver.accounts_history AS h
    WHERE h.known_at <= params.as_of
),
account_grouped AS (
    SELECT *,
        count(known_at) OVER (
            PARTITION BY account_id ORDER BY at, kind, tiebreak ROWS UNBOUNDED PRECEDING
        ) AS snapshot_group
    FROM account_stream
),
account_filled AS (
    SELECT payment_id, role, kind,
        max(opening_date) OVER (PARTITION BY account_id, snapshot_group) AS opening_date,
        max(known_at) OVER (PARTITION BY account_id, snapshot_group) AS known_at
    FROM account_grouped
),
account_pit AS (
    SELECT payment_id,
        max(CASE WHEN role = 'src' THEN opening_date END) AS src_opening_date,
        max(CASE WHEN role = 'src' THEN known_at END) AS src_account_known_at,
        max(CASE WHEN role = 'dest' THEN opening_date END) AS dest_opening_date,
        max(CASE WHEN role = 'dest' THEN known_at END) AS dest_account_known_at
    FROM account_filled
    WHERE kind = 1
    GROUP BY payment_id
),
-- The same as-of lookup for risk flags: the latest batch known at the payment that mentions
-- the account (a later 0 clears an earlier flag).
risk_stream AS (
    SELECT account_id, ts AS at, 1 AS kind, '' AS tiebreak, payment_id, role,
        CAST(NULL AS INT) AS risk_flag, CAST(NULL AS TIMESTAMP) AS known_at
    FROM lookups
    UNION ALL
    SELECT r.account_id, r.known_at AS at, 0 AS kind, r.batch_file AS tiebreak,
        CAST(NULL AS VARCHAR) AS payment_id, CAST(NULL AS VARCHAR) AS role, r.risk_flag,
        CAST(r.known_at AS TIMESTAMP) AS known_at
    FROM params CROSS JOIN silver.risk_feed_history AS r
    WHERE r.known_at <= params.as_of
),
risk_grouped AS (
    SELECT *,
        count(known_at) OVER (
            PARTITION BY account_id ORDER BY at, kind, tiebreak ROWS UNBOUNDED PRECEDING
        ) AS batch_group
    FROM risk_stream
),
risk_filled AS (
    SELECT payment_id, role, kind,
        max(risk_flag) OVER (PARTITION BY account_id, batch_group) AS risk_flag,
        max(known_at) OVER (PARTITION BY account_id, batch_group) AS known_at
    FROM risk_grouped
),
risk_pit AS (
    SELECT payment_id,
        max(CASE WHEN role = 'src' THEN risk_flag END) AS src_risk_flag,
        max(CASE WHEN role = 'src' THEN known_at END) AS src_risk_known_at,
        max(CASE WHEN role = 'dest' THEN risk_flag END) AS dest_risk_flag,
        max(CASE WHEN role = 'dest' THEN known_at END) AS dest_risk_known_at
    FROM risk_filled
    WHERE kind = 1
    GROUP BY payment_id
),
-- Source behaviour over [t - window, t): one stream per source account holding each payment's
-- lookup, its entry (+1, +amount at ts) and its expiries (-1, -amount at ts + window). A lookup
-- sorts before every event at the same instant, so the running sums at a lookup count exactly
-- the payments q with t - window <= t_q < t (p and payments at the same instant excluded).
-- Running sums over ROWS frames stream; RANGE frames evaluated per row were the slowest part.
behaviour_stream AS (
    SELECT src_account_id, ts AS at, 0 AS kind, payment_id,
        0 AS n_1h, 0 AS n_24h, 0 AS n_7d, CAST(0 AS DECIMAL(18, 2)) AS s_1h,
        CAST(0 AS DECIMAL(18, 2)) AS s_24h, CAST(0 AS DECIMAL(18, 2)) AS s_7d
    FROM payments
    UNION ALL
    SELECT src_account_id, ts AS at, 1 AS kind, CAST(NULL AS VARCHAR) AS payment_id,
        1 AS n_1h, 1 AS n_24h, 1 AS n_7d, amount AS s_1h, amount AS s_24h, amount AS s_7d
    FROM payments
    UNION ALL
    SELECT src_account_id, ts + INTERVAL '1 hour' AS at, 1 AS kind,
        CAST(NULL AS VARCHAR) AS payment_id, -1 AS n_1h, 0 AS n_24h, 0 AS n_7d, -amount AS s_1h,
        CAST(0 AS DECIMAL(18, 2)) AS s_24h, CAST(0 AS DECIMAL(18, 2)) AS s_7d
    FROM payments
    UNION ALL
    SELECT src_account_id, ts + INTERVAL '24 hours' AS at, 1 AS kind,
        CAST(NULL AS VARCHAR) AS payment_id, 0 AS n_1h, -1 AS n_24h, 0 AS n_7d,
        CAST(0 AS DECIMAL(18, 2)) AS s_1h, -amount AS s_24h, CAST(0 AS DECIMAL(18, 2)) AS s_7d
    FROM payments
    UNION ALL
    SELECT src_account_id, ts + INTERVAL '7 days' AS at, 1 AS kind,
        CAST(NULL AS VARCHAR) AS payment_id, 0 AS n_1h, 0 AS n_24h, -1 AS n_7d,
        CAST(0 AS DECIMAL(18, 2)) AS s_1h, CAST(0 AS DECIMAL(18, 2)) AS s_24h, -amount AS s_7d
    FROM payments
),
behaviour_sums AS (
    SELECT payment_id, kind,
        sum(n_1h) OVER running AS src_count_1h,
        sum(s_1h) OVER running AS src_amount_1h,
        sum(n_24h) OVER running AS src_count_24h,
        sum(s_24h) OVER running AS src_amount_24h,
        sum(n_7d) OVER running AS src_count_7d,
        sum(s_7d) OVER running AS src_amount_7d
    FROM behaviour_stream
    WINDOW running AS (
        PARTITION BY src_account_id ORDER BY at, kind ROWS UNBOUNDED PRECEDING
    )
),
pair_history AS (
    SELECT payment_id,
        min(ts) OVER (PARTITION BY src_account_id, dest_account_id) < ts AS pair_seen_before
    FROM payments
),
behaviour AS (
    SELECT s.payment_id, s.src_count_1h,
        CAST(s.src_amount_1h AS DECIMAL(29, 2)) AS src_amount_1h,
        s.src_count_24h,
        CAST(s.src_amount_24h AS DECIMAL(29, 2)) AS src_amount_24h,
        s.src_count_7d,
        CAST(s.src_amount_7d AS DECIMAL(29, 2)) AS src_amount_7d,
        h.pair_seen_before
    FROM behaviour_sums AS s
    JOIN pair_history AS h ON h.payment_id = s.payment_id
    WHERE s.kind = 0
),
-- Distinct senders into the destination over [t - 24h, t): a sender is active on
-- (first payment of a run, last payment of the run + 24h]; +1 / -1 events at those bounds,
-- summed over a stream where a payment sorts before an event at the same instant.
pair_runs AS (
    SELECT dest_account_id, ts,
        lag(ts) OVER (PARTITION BY dest_account_id, src_account_id ORDER BY ts) AS previous_ts,
        lead(ts) OVER (PARTITION BY dest_account_id, src_account_id ORDER BY ts) AS next_ts
    FROM payments
),
sender_stream AS (
    SELECT dest_account_id, ts AS at, 0 AS kind, payment_id, 0 AS delta FROM payments
    UNION ALL
    SELECT dest_account_id, ts AS at, 1 AS kind, CAST(NULL AS VARCHAR) AS payment_id, 1 AS delta
    FROM pair_runs
    WHERE previous_ts IS NULL OR ts > previous_ts + INTERVAL '24 hours'
    UNION ALL
    SELECT dest_account_id, ts + INTERVAL '24 hours' AS at, 1 AS kind,
        CAST(NULL AS VARCHAR) AS payment_id, -1 AS delta
    FROM pair_runs
    WHERE next_ts IS NULL OR next_ts > ts + INTERVAL '24 hours'
),
senders AS (
    SELECT payment_id, kind,
        sum(delta) OVER (
            PARTITION BY dest_account_id ORDER BY at, kind ROWS UNBOUNDED PRECEDING
        ) AS dest_distinct_senders_24h
    FROM sender_stream
),
-- The label known by T: latest reported date, then latest known.
labels AS (
    SELECT payment_id, fraud_type, fraud_reported_date, label_source, known_at
    FROM (
        SELECT l.*,
            row_number() OVER (
                PARTITION BY l.payment_id
                ORDER BY l.fraud_reported_date DESC, l.known_at DESC, l._source_file DESC,
                    l._source_line DESC
            ) AS recency
        FROM params CROSS JOIN silver.fraud_labels_history AS l
        WHERE l.known_at <= params.as_of
    ) AS ranked
    WHERE recency = 1
)
SELECT
    p.payment_id,
    p.src_account_id,
    p.dest_account_id,
    p.amount,
    p.ts AS "timestamp",
    a.src_opening_date,
    a.dest_opening_date,
    CAST(CAST(p.ts AS DATE) AS BIGINT) - CAST(a.src_opening_date AS BIGINT) AS src_account_age_days,
    CAST(CAST(p.ts AS DATE) AS BIGINT) - CAST(a.dest_opening_date AS BIGINT) AS dest_account_age_days,
    arrow_cast(a.src_account_known_at, 'Timestamp(Microsecond, Some("UTC"))') AS src_account_known_at,
    arrow_cast(a.dest_account_known_at, 'Timestamp(Microsecond, Some("UTC"))') AS dest_account_known_at,
    COALESCE(r.src_risk_flag, 0) AS src_risk_flag,
    COALESCE(r.dest_risk_flag, 0) AS dest_risk_flag,
    arrow_cast(r.src_risk_known_at, 'Timestamp(Microsecond, Some("UTC"))') AS src_risk_known_at,
    arrow_cast(r.dest_risk_known_at, 'Timestamp(Microsecond, Some("UTC"))') AS dest_risk_known_at,
    b.src_count_1h,
    COALESCE(b.src_amount_1h, 0) AS src_amount_1h,
    b.src_count_24h,
    COALESCE(b.src_amount_24h, 0) AS src_amount_24h,
    b.src_count_7d,
    COALESCE(b.src_amount_7d, 0) AS src_amount_7d,
    s.dest_distinct_senders_24h,
    b.pair_seen_before,
    CASE
        WHEN l.payment_id IS NOT NULL THEN 'fraud'
        WHEN p.ts <= params.maturity_cutoff THEN 'legit_mature'
        ELSE 'unknown_immature'
    END AS label_status,
    CASE
        WHEN l.payment_id IS NOT NULL THEN true
        WHEN p.ts <= params.maturity_cutoff THEN false
    END AS fraud_flag,
    l.fraud_type,
    l.fraud_reported_date,
    l.label_source,
    l.known_at AS label_known_at,
    CAST(floor((date_part('epoch', l.known_at) - date_part('epoch', p.ts)) / 86400) AS BIGINT)
        AS label_delay_days,
    string_to_array(concat_ws(',',
        CASE WHEN a.src_account_known_at IS NULL THEN 'src_account_unknown_at_payment' END,
        CASE WHEN a.dest_account_known_at IS NULL THEN 'dest_account_unknown_at_payment' END,
        CASE WHEN a.src_opening_date > CAST(p.ts AS DATE) THEN 'src_account_opened_after_payment' END,
        CASE WHEN a.dest_opening_date > CAST(p.ts AS DATE) THEN 'dest_account_opened_after_payment' END
    ), ',') AS data_quality_flags,
    p.known_at AS payment_known_at,
    params.as_of,
    params.label_maturity_days,
    to_char(p.ts, '%Y-%m-%d') AS payment_date
FROM params
CROSS JOIN payments AS p
LEFT JOIN account_pit AS a ON a.payment_id = p.payment_id
LEFT JOIN risk_pit AS r ON r.payment_id = p.payment_id
LEFT JOIN behaviour AS b ON b.payment_id = p.payment_id
LEFT JOIN (SELECT payment_id, dest_distinct_senders_24h FROM senders WHERE kind = 0) AS s
    ON s.payment_id = p.payment_id
LEFT JOIN labels AS l ON l.payment_id = p.payment_id
