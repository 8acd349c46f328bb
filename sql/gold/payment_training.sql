-- paylake: partition_by=payment_date
-- Point-in-time training table as of params.run.as_of (T): one row per payment with
-- timestamp <= T known by T. Every feature uses only facts known at or before the payment;
-- labels count only when known by T. Bounds are documented in docs/point-in-time.md.
-- Every feature comes with the payment from gold.int_accounts_as_of (sorted streams per
-- account); this model adds the label known by T (gold.int_labels_as_of). The labels, a few per
-- thousand payments, are the build side of a hash join, hashed once, and the payments stream
-- through it. It is written as a RIGHT JOIN with the labels first because the planner keeps the
-- written sides when one has no row counts (a window's output): as a LEFT JOIN it hashed 1M
-- payments (380 MB) instead.
-- The one-row `params` comes first in every cross join: the engine buffers the left side and
-- emits one batch per buffered row, so a large left side would stream one-row batches. (A local
-- run replaces the join with the parameters' values; a cluster runs it as written.)
WITH params AS (
    SELECT as_of, label_maturity_days, maturity_cutoff FROM params.run
)
SELECT
    p.payment_id,
    p.src_account_id,
    p.dest_account_id,
    p.amount,
    p.ts AS "timestamp",
    p.src_opening_date,
    p.dest_opening_date,
    CAST(CAST(p.ts AS DATE) AS BIGINT) - CAST(p.src_opening_date AS BIGINT) AS src_account_age_days,
    CAST(CAST(p.ts AS DATE) AS BIGINT) - CAST(p.dest_opening_date AS BIGINT) AS dest_account_age_days,
    arrow_cast(p.src_account_known_at, 'Timestamp(Microsecond, Some("UTC"))') AS src_account_known_at,
    arrow_cast(p.dest_account_known_at, 'Timestamp(Microsecond, Some("UTC"))') AS dest_account_known_at,
    COALESCE(p.src_risk_flag, 0) AS src_risk_flag,
    COALESCE(p.dest_risk_flag, 0) AS dest_risk_flag,
    arrow_cast(p.src_risk_known_at, 'Timestamp(Microsecond, Some("UTC"))') AS src_risk_known_at,
    arrow_cast(p.dest_risk_known_at, 'Timestamp(Microsecond, Some("UTC"))') AS dest_risk_known_at,
    p.src_count_1h,
    COALESCE(p.src_amount_1h, 0) AS src_amount_1h,
    p.src_count_24h,
    COALESCE(p.src_amount_24h, 0) AS src_amount_24h,
    p.src_count_7d,
    COALESCE(p.src_amount_7d, 0) AS src_amount_7d,
    p.dest_distinct_senders_24h,
    p.pair_seen_before,
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
        CASE WHEN p.src_account_known_at IS NULL THEN 'src_account_unknown_at_payment' END,
        CASE WHEN p.dest_account_known_at IS NULL THEN 'dest_account_unknown_at_payment' END,
        CASE WHEN p.src_opening_date > CAST(p.ts AS DATE) THEN 'src_account_opened_after_payment' END,
        CASE WHEN p.dest_opening_date > CAST(p.ts AS DATE) THEN 'dest_account_opened_after_payment' END
    ), ',') AS data_quality_flags,
    p.known_at AS payment_known_at,
    params.as_of,
    params.label_maturity_days,
    -- A date cast, not to_char (which parsed its format on every row); Utf8, as VARCHAR
    -- would give Utf8View.
    arrow_cast(CAST(p.ts AS DATE), 'Utf8') AS payment_date
FROM params
CROSS JOIN (
    gold.int_labels_as_of AS l
    RIGHT JOIN gold.int_accounts_as_of AS p ON l.payment_id = p.payment_id
)
