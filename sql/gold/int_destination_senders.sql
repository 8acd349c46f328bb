-- paylake: materialized=temporary
-- Distinct senders into each payment's destination over [t - 24h, t), payments at the same
-- instant excluded, from the destination's payments read in time order once.
SELECT payment_id,
    trailing_distinct(src_account_id, ts, 86400) OVER (
        PARTITION BY dest_account_id ORDER BY ts
    ) AS dest_distinct_senders_24h
FROM gold.int_training_payments
