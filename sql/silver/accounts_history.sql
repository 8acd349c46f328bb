-- paylake: incremental_key=account_id
-- Every snapshot's view of every account: valid from the snapshot's knowledge time until the
-- next snapshot that mentions the account. Two clocks: known_at (when the lake could know it)
-- and snapshot_date (the day the snapshot describes, from its knowledge time in UTC).
SELECT
    account_id,
    opening_date,
    CAST(_known_at AS DATE) AS snapshot_date,
    _known_at AS valid_from,
    lead(_known_at) OVER (PARTITION BY account_id ORDER BY _known_at, _source_file) AS valid_to,
    _known_at AS known_at,
    _source_file AS snapshot_file,
    _rescued,
    _source_line,
    _batch_id
FROM silver.stg_accounts
WHERE outcome = 'kept'
