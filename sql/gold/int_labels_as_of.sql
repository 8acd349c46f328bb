-- paylake: materialized=temporary
-- The label of each labelled payment as known by params.run.as_of (T): its latest reported
-- date, then the latest known. A temporary model, not a view: written once, it has row counts,
-- so gold.payment_training hashes these few labels once (a CollectLeft join) instead of
-- repartitioning every payment by payment_id to join them.
SELECT payment_id, fraud_type, fraud_reported_date, label_source, known_at
FROM (
    SELECT l.payment_id, l.fraud_type, l.fraud_reported_date, l.label_source, l.known_at,
        row_number() OVER (
            PARTITION BY l.payment_id
            ORDER BY l.fraud_reported_date DESC, l.known_at DESC, l._source_file DESC,
                l._source_line DESC
        ) AS recency
    FROM params.run AS params CROSS JOIN silver.fraud_labels_history AS l
    WHERE l.known_at <= params.as_of
) AS ranked
WHERE recency = 1
