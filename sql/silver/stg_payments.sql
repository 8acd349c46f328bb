-- paylake: materialized=temporary
-- Every bronze payment row classified exactly once by `outcome`:
-- kept | identical_duplicate | conflicting_duplicate | quarantined.
-- Most payment ids occur once: only the rows of repeated ids are ranked (first known wins), so
-- the window sorts the few duplicates instead of one partition per payment.
-- The small side of a join is its left (build) side: repeated ids, never all payments.
WITH repeated_rows AS (
    SELECT
        checked.*,
        -- What two rows of one payment id must agree on to be the same payment.
        concat_ws('|', src_account_id, dest_account_id, COALESCE(payment_reference, '<null>'),
            CAST(amount AS VARCHAR), CAST(payment_timestamp AS VARCHAR)) AS content
    FROM silver.int_repeated_payment_ids AS repeated_ids
    RIGHT SEMI JOIN silver.int_payments_checked AS checked
        ON checked.payment_id = repeated_ids.payment_id AND checked.rule_failures = ''
),
ranked_repeats AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY payment_id ORDER BY _known_at, _source_file, _source_line, _file_sha256
        ) AS occurrence,
        first_value(content) OVER (
            PARTITION BY payment_id ORDER BY _known_at, _source_file, _source_line, _file_sha256
        ) AS first_content
    FROM repeated_rows
)
-- Every row that is not ranked, in one scan: rows that failed a rule, and valid rows of ids
-- no other valid row carries.
SELECT
    raw_payment_id, raw_src_account_id, raw_dest_account_id, raw_payment_reference, raw_amount,
    raw_timestamp, payment_id, src_account_id, dest_account_id, payment_reference, amount,
    payment_timestamp,
    CASE WHEN rule_failures = '' THEN 'kept' ELSE 'quarantined' END AS outcome,
    rule_failures,
    _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at,
    _schema_fingerprint
FROM silver.int_repeated_payment_ids AS repeated_ids
RIGHT ANTI JOIN silver.int_payments_checked AS checked
    ON checked.payment_id = repeated_ids.payment_id AND checked.rule_failures = ''
UNION ALL
SELECT
    raw_payment_id, raw_src_account_id, raw_dest_account_id, raw_payment_reference, raw_amount,
    raw_timestamp, payment_id, src_account_id, dest_account_id, payment_reference, amount,
    payment_timestamp,
    CASE
        WHEN occurrence = 1 THEN 'kept'
        WHEN content = first_content THEN 'identical_duplicate'
        ELSE 'conflicting_duplicate'
    END AS outcome,
    CASE
        WHEN occurrence > 1 AND content <> first_content THEN 'conflicting_duplicate'
        ELSE ''
    END AS rule_failures,
    _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at,
    _schema_fingerprint
FROM ranked_repeats
