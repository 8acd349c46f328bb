-- paylake: incremental_key=account_id
-- The current flag per account: the latest batch that mentions it wins (a later 0 clears a flag).
SELECT account_id, risk_flag, known_at, batch_file
FROM (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY account_id ORDER BY known_at DESC, batch_file DESC
        ) AS recency
    FROM silver.risk_feed_history
) AS ranked
WHERE recency = 1
