-- paylake: materialized=temporary
-- Every bronze payment row classified exactly once by `outcome`:
-- kept | identical_duplicate | conflicting_duplicate | quarantined.
-- Most payment ids occur once: only the rows of repeated ids are ranked (first known wins), so
-- the window sorts the few duplicates instead of one partition per payment.
WITH valid AS (
    SELECT * FROM silver.int_payments_checked WHERE rule_failures = ''
),
repeated_ids AS (
    SELECT payment_id FROM valid GROUP BY payment_id HAVING count(*) > 1
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
    -- The small side of a join is its left (build) side: repeated ids, never all payments.
    FROM repeated_ids RIGHT SEMI JOIN valid ON valid.payment_id = repeated_ids.payment_id
)
SELECT
    raw_payment_id, raw_src_account_id, raw_dest_account_id, raw_payment_reference, raw_amount,
    raw_timestamp, payment_id, src_account_id, dest_account_id, payment_reference, amount,
    payment_timestamp,
    'kept' AS outcome,
    '' AS rule_failures,
    _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at,
    _schema_fingerprint
FROM repeated_ids RIGHT ANTI JOIN valid ON valid.payment_id = repeated_ids.payment_id
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
UNION ALL
SELECT
    raw_payment_id, raw_src_account_id, raw_dest_account_id, raw_payment_reference, raw_amount,
    raw_timestamp, payment_id, src_account_id, dest_account_id, payment_reference, amount,
    payment_timestamp,
    'quarantined' AS outcome,
    rule_failures,
    _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at,
    _schema_fingerprint
FROM silver.int_payments_checked
WHERE rule_failures <> ''
