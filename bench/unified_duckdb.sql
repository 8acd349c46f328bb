-- The unified payment table (the original pipeline's thirteen columns) in ONE DuckDB query over
-- the landing files: the yardstick paylake's Gold `unified_payments` is measured against. Same
-- semantics as sql/silver/*.sql and sql/gold/unified_payments.sql as of now, where a file's
-- place in time is its path: the flat layout's four CSVs carry none (one file per source, so
-- order means line order), the folder layout's names carry their knowledge time and sort by it.
--   * every value trimmed, empty means missing; a row failing a Silver rule is dropped;
--   * payments: the first valid occurrence of a payment_id wins (by file, then line);
--   * accounts: the latest snapshot holding a valid row of an account wins, and within it the
--     last such row;
--   * risk flags: the latest batch holding a valid flag of an account wins, and within it the
--     highest flag; no flag means 0;
--   * labels: the latest fraud_reported_date wins, ties to the latest file, then line.
-- Unlike paylake, DuckDB reads again a file whose content already came under another name; the
-- generated input sends no such copy. Each source's files come from a variable holding a path
-- or glob (SET VARIABLE payments_files = '...', and accounts_files, risk_files, labels_files).
-- Columns are read as text, as paylake's Bronze lands them, and typed with the same rules.
WITH raw_payments AS (
    SELECT
        NULLIF(TRIM(payment_id), '') AS payment_id,
        NULLIF(TRIM(src_account_id), '') AS src_account_id,
        NULLIF(TRIM(dest_account_id), '') AS dest_account_id,
        NULLIF(TRIM(payment_reference), '') AS payment_reference,
        TRIM(amount) AS amount_text,
        TRIM("timestamp") AS timestamp_text,
        filename AS file,
        -- Files are read in path order and each in line order (DuckDB keeps insertion order).
        row_number() OVER () AS line
    FROM read_csv(getvariable('payments_files'), header = true, all_varchar = true,
        filename = true)
),
payments AS (
    SELECT payment_id, src_account_id, dest_account_id, payment_reference, amount, "timestamp"
    FROM (
        SELECT
            *,
            -- The same patterns as stg_payments: plain decimals with at most two significant
            -- decimals, ISO-8601 timestamps (a naive one is UTC: the session's time zone).
            CASE WHEN regexp_matches(amount_text, '^[+-]?[0-9]{1,16}(\.[0-9]{0,2}0*)?$')
                THEN TRY_CAST(amount_text AS DECIMAL(18, 2)) END AS amount,
            CASE WHEN regexp_matches(timestamp_text,
                    '^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:?[0-9]{2})?$')
                THEN TRY_CAST(timestamp_text AS TIMESTAMPTZ) END AS "timestamp"
        FROM raw_payments
    )
    WHERE payment_id IS NOT NULL AND src_account_id IS NOT NULL AND dest_account_id IS NOT NULL
        AND amount > 0 AND "timestamp" IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY payment_id ORDER BY file, line) = 1
),
accounts AS (
    SELECT account_id, opening_date
    FROM (
        SELECT
            NULLIF(TRIM(account_id), '') AS account_id,
            CASE WHEN regexp_matches(TRIM(opening_date), '^[0-9]{4}-[0-9]{2}-[0-9]{2}$')
                THEN TRY_CAST(TRIM(opening_date) AS DATE) END AS opening_date,
            filename AS file,
            row_number() OVER () AS line
        FROM read_csv(getvariable('accounts_files'), header = true, all_varchar = true,
            filename = true)
    )
    WHERE account_id IS NOT NULL AND opening_date IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY account_id ORDER BY file DESC, line DESC) = 1
),
risk AS (
    SELECT account_id, max(risk_flag) AS risk_flag
    FROM (
        SELECT
            NULLIF(TRIM(account_id), '') AS account_id,
            TRY_CAST(TRIM(risk_flag) AS INTEGER) AS risk_flag,
            filename AS file
        FROM read_csv(getvariable('risk_files'), header = true, all_varchar = true,
            filename = true)
        WHERE NULLIF(TRIM(account_id), '') IS NOT NULL AND TRIM(risk_flag) IN ('0', '1', '2')
        QUALIFY file = max(file) OVER (PARTITION BY account_id)
    )
    GROUP BY account_id
),
labels AS (
    SELECT payment_id, fraud_type, fraud_reported_date
    FROM (
        SELECT
            NULLIF(TRIM(payment_id), '') AS payment_id,
            NULLIF(TRIM(fraud_type), '') AS fraud_type,
            CASE WHEN regexp_matches(TRIM(fraud_reported_date), '^[0-9]{4}-[0-9]{2}-[0-9]{2}$')
                THEN TRY_CAST(TRIM(fraud_reported_date) AS DATE) END AS fraud_reported_date,
            filename AS file,
            row_number() OVER () AS line
        FROM read_csv(getvariable('labels_files'), header = true, all_varchar = true,
            filename = true)
    )
    WHERE payment_id IS NOT NULL AND fraud_type IS NOT NULL AND fraud_reported_date IS NOT NULL
    QUALIFY row_number() OVER (
        PARTITION BY payment_id ORDER BY fraud_reported_date DESC, file DESC, line DESC
    ) = 1
)
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
    label.fraud_reported_date
FROM payments AS p
LEFT JOIN accounts AS src_account ON src_account.account_id = p.src_account_id
LEFT JOIN accounts AS dest_account ON dest_account.account_id = p.dest_account_id
LEFT JOIN risk AS src_risk ON src_risk.account_id = p.src_account_id
LEFT JOIN risk AS dest_risk ON dest_risk.account_id = p.dest_account_id
LEFT JOIN labels AS label ON label.payment_id = p.payment_id
