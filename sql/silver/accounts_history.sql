-- Every snapshot's view of every account: valid from the snapshot's knowledge time until the
-- next snapshot that mentions the account.
SELECT
    account_id,
    opening_date,
    _known_at AS valid_from,
    lead(_known_at) OVER (PARTITION BY account_id ORDER BY _known_at, _source_file) AS valid_to,
    _known_at AS known_at,
    _source_file AS snapshot_file,
    _rescued,
    _source_line,
    _batch_id
FROM silver.stg_accounts
WHERE outcome = 'kept'
