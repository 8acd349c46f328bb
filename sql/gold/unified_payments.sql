-- paylake: partition_by=payment_date incremental_key=payment_id
-- The unified payment intelligence table, latest-knowledge view: one row per silver payment.
-- The first thirteen columns are those of the original pipeline, in its order.
SELECT
    p.payment_id,
    p.src_account_id,
    p.dest_account_id,
    p.payment_reference,
    p.amount,
    p."timestamp",
    src_account.opening_date AS src_opening_date,
    dest_account.opening_date AS dest_opening_date,
    COALESCE(src_risk.risk_flag, 0) AS src_risk_flag,
    COALESCE(dest_risk.risk_flag, 0) AS dest_risk_flag,
    label.payment_id IS NOT NULL AS fraud_flag,
    label.fraud_type,
    label.fraud_reported_date,
    -- Whole days from account opening to the payment's UTC date.
    CAST(CAST(p."timestamp" AS DATE) AS BIGINT) - CAST(src_account.opening_date AS BIGINT)
        AS src_account_age_days,
    CAST(CAST(p."timestamp" AS DATE) AS BIGINT) - CAST(dest_account.opening_date AS BIGINT)
        AS dest_account_age_days,
    src_risk.known_at AS src_risk_known_at,
    dest_risk.known_at AS dest_risk_known_at,
    label.label_source,
    string_to_array(concat_ws(',',
        CASE WHEN src_account.account_id IS NULL THEN 'missing_src_account' END,
        CASE WHEN dest_account.account_id IS NULL THEN 'missing_dest_account' END,
        CASE WHEN src_account.opening_date > CAST(p."timestamp" AS DATE)
            THEN 'src_account_opened_after_payment' END,
        CASE WHEN dest_account.opening_date > CAST(p."timestamp" AS DATE)
            THEN 'dest_account_opened_after_payment' END,
        CASE WHEN p.src_account_id = p.dest_account_id THEN 'self_transfer' END,
        CASE WHEN label.fraud_reported_date < CAST(p."timestamp" AS DATE)
            THEN 'label_reported_before_payment' END
    ), ',') AS data_quality_flags,
    p.known_at AS payment_known_at,
    src_account.known_at AS src_account_known_at,
    dest_account.known_at AS dest_account_known_at,
    label.known_at AS label_known_at,
    p._ingested_at AS payment_ingested_at,
    p._source_file AS payment_source_file,
    CAST(1 AS INT) AS schema_version,
    -- A date cast, not to_char (which parsed its format on every row); Utf8, as VARCHAR
    -- would give Utf8View.
    arrow_cast(CAST(p."timestamp" AS DATE), 'Utf8') AS payment_date
FROM silver.payments AS p
LEFT JOIN silver.accounts AS src_account ON src_account.account_id = p.src_account_id
LEFT JOIN silver.accounts AS dest_account ON dest_account.account_id = p.dest_account_id
LEFT JOIN silver.risk_feed AS src_risk ON src_risk.account_id = p.src_account_id
LEFT JOIN silver.risk_feed AS dest_risk ON dest_risk.account_id = p.dest_account_id
LEFT JOIN silver.fraud_labels AS label ON label.payment_id = p.payment_id
