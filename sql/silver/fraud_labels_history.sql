-- paylake: incremental_key=payment_id
-- Every usable label as it arrived, with when the lake learned it and where from.
-- A label whose payment is not in silver.payments is kept and marked as an orphan.
-- The labelled payments found in silver.payments: the labels are the build side and the
-- payments stream past them, instead of a DISTINCT over every payment id (3.5 s and a spill at
-- 10M payments).
WITH labelled_payments AS (
    SELECT DISTINCT p.payment_id
    FROM silver.stg_fraud_labels AS labels
    RIGHT SEMI JOIN silver.payments AS p ON p.payment_id = labels.payment_id
)
SELECT
    l.payment_id,
    l.fraud_type,
    l.fraud_reported_date,
    l.label_source,
    l._known_at AS known_at,
    p.payment_id IS NULL AS is_orphan,
    l._rescued,
    l._source_file,
    l._source_line,
    l._batch_id
FROM silver.stg_fraud_labels AS l
LEFT JOIN labelled_payments AS p ON p.payment_id = l.payment_id
WHERE l.outcome = 'kept'
