-- paylake: incremental_key=account_id
-- Every snapshot's view of every account: valid from the snapshot's knowledge time until the
-- next snapshot that mentions the account. Two clocks: known_at (when the lake could know it)
-- and snapshot_date (the day the snapshot describes, from its knowledge time in UTC).
-- previous_known_at and the two opening-date comparisons tell the account's snapshot before
-- and after this one apart from this one (Gold keeps only the rows where something changes).
-- Every window has the same partition and order: one sort serves them all. A file resent at
-- its path with other content lands again in a later run: the run orders its rows after the
-- first's, here and in Gold's stream, so two rows of one account never tie.
SELECT
    account_id,
    opening_date,
    CAST(_known_at AS DATE) AS snapshot_date,
    _known_at AS valid_from,
    lead(_known_at) OVER (PARTITION BY account_id ORDER BY _known_at, _source_file, _batch_id) AS valid_to,
    _known_at AS known_at,
    _source_file AS snapshot_file,
    _rescued,
    _source_line,
    _batch_id,
    lag(_known_at) OVER (PARTITION BY account_id ORDER BY _known_at, _source_file, _batch_id)
        AS previous_known_at,
    -- True for the account's first snapshot, and when the one before said otherwise.
    (lag(opening_date) OVER (PARTITION BY account_id ORDER BY _known_at, _source_file, _batch_id)
            IS DISTINCT FROM opening_date)
        OR lag(_known_at) OVER (PARTITION BY account_id ORDER BY _known_at, _source_file, _batch_id) IS NULL
        AS opening_date_changed,
    -- True for the account's last snapshot, and when the one after says otherwise.
    (lead(opening_date) OVER (PARTITION BY account_id ORDER BY _known_at, _source_file, _batch_id)
            IS DISTINCT FROM opening_date)
        OR lead(_known_at) OVER (PARTITION BY account_id ORDER BY _known_at, _source_file, _batch_id) IS NULL
        AS opening_date_changes_next
FROM silver.stg_accounts
WHERE outcome = 'kept'
