-- paylake: incremental_key=payment_id
-- Label rows that failed a rule, with their original text and the rules they failed.
SELECT
    raw_payment_id AS payment_id,
    raw_fraud_type AS fraud_type,
    raw_fraud_reported_date AS fraud_reported_date,
    string_to_array(rule_failures, ',') AS failed_rules,
    _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at
FROM silver.stg_fraud_labels
WHERE outcome = 'quarantined'
