-- paylake: incremental_key=account_id
-- The current view: each account as its latest snapshot shows it.
SELECT account_id, opening_date, valid_from, known_at, snapshot_file, _rescued
FROM (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY account_id ORDER BY valid_from DESC, snapshot_file DESC, _batch_id DESC
        ) AS recency
    FROM silver.accounts_history
) AS ranked
WHERE recency = 1
