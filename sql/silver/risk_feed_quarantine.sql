-- paylake: incremental_key=account_id
-- Risk rows that failed a rule, with their original text and the rules they failed.
SELECT
    raw_account_id AS account_id,
    raw_risk_flag AS risk_flag,
    string_to_array(rule_failures, ',') AS failed_rules,
    _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at
FROM silver.stg_risk_feed
WHERE outcome = 'quarantined'
