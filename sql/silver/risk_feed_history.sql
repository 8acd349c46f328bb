-- paylake: incremental_key=account_id
-- One flag per account per batch, with the batch's knowledge time.
SELECT
    account_id,
    risk_flag,
    _known_at AS known_at,
    _source_file AS batch_file,
    _rescued,
    _source_line,
    _batch_id
FROM silver.stg_risk_feed
WHERE outcome = 'kept'
