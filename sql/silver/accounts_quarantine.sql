-- paylake: incremental_key=account_id
-- Account rows that failed a rule, with their original text and the rules they failed.
SELECT
    raw_account_id AS account_id,
    raw_opening_date AS opening_date,
    string_to_array(rule_failures, ',') AS failed_rules,
    _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at
FROM silver.stg_accounts
WHERE outcome = 'quarantined'
