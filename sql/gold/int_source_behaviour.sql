-- paylake: materialized=temporary
-- Source behaviour over [t - window, t): the count and amount of the source account's payments
-- in the hour, day and week before each payment (the payment itself and others at the same
-- instant excluded), and whether the source paid this destination at an earlier time. Every
-- function reads each source account's payments in time order once, in one window.
SELECT payment_id,
    trailing_sum(1, ts, 3600) OVER by_source AS src_count_1h,
    CAST(trailing_sum(amount, ts, 3600) OVER by_source AS DECIMAL(29, 2)) AS src_amount_1h,
    trailing_sum(1, ts, 86400) OVER by_source AS src_count_24h,
    CAST(trailing_sum(amount, ts, 86400) OVER by_source AS DECIMAL(29, 2)) AS src_amount_24h,
    trailing_sum(1, ts, 604800) OVER by_source AS src_count_7d,
    CAST(trailing_sum(amount, ts, 604800) OVER by_source AS DECIMAL(29, 2)) AS src_amount_7d,
    seen_before(dest_account_id, ts) OVER by_source AS pair_seen_before
FROM gold.int_training_payments
WINDOW by_source AS (PARTITION BY src_account_id ORDER BY ts)
