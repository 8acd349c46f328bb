-- paylake: incremental_key=payment_id
-- One row per payment_id: the first known occurrence that passed every rule.
SELECT
    payment_id,
    src_account_id,
    dest_account_id,
    payment_reference,
    amount,
    payment_timestamp AS "timestamp",
    _known_at AS known_at,
    _rescued,
    _source_file,
    _source_line,
    _batch_id,
    _ingested_at
FROM silver.stg_payments
WHERE outcome = 'kept'
