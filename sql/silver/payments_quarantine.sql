-- paylake: incremental_key=payment_id
-- Payment rows that failed a rule or conflict with an earlier row of the same payment_id,
-- with their original text and the names of every rule they failed.
SELECT
    raw_payment_id AS payment_id,
    raw_src_account_id AS src_account_id,
    raw_dest_account_id AS dest_account_id,
    raw_payment_reference AS payment_reference,
    raw_amount AS amount,
    raw_timestamp AS "timestamp",
    string_to_array(rule_failures, ',') AS failed_rules,
    _rescued,
    _source_file,
    _source_line,
    _file_sha256,
    _batch_id,
    _ingested_at,
    _known_at
FROM silver.stg_payments
WHERE outcome IN ('quarantined', 'conflicting_duplicate')
