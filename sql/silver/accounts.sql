-- paylake: incremental_key=account_id
-- The current view: each account as its latest snapshot shows it, the row of its history
-- that no later snapshot ends (its history is ordered by knowledge time, file and run, so
-- that row is one). A filter, not a window ranking 1.26M history rows again.
SELECT account_id, opening_date, valid_from, known_at, snapshot_file, _rescued
FROM silver.accounts_history
WHERE valid_to IS NULL
