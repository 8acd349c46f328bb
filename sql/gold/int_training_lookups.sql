-- paylake: materialized=view
-- Each payment looks its source and its destination account up once: one row per payment and
-- role, read by the as-of models of accounts and of risk flags.
SELECT payment_id, 'src' AS role, src_account_id AS account_id, ts
FROM gold.int_training_payments
UNION ALL
SELECT payment_id, 'dest' AS role, dest_account_id AS account_id, ts
FROM gold.int_training_payments
