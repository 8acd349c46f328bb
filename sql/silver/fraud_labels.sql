-- paylake: incremental_key=payment_id
-- One current label per payment: the latest fraud_reported_date, ties broken by latest known_at.
SELECT payment_id, fraud_type, fraud_reported_date, label_source, known_at, is_orphan, _source_file
FROM (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY payment_id
            ORDER BY fraud_reported_date DESC, known_at DESC, _source_file DESC, _source_line DESC
        ) AS recency
    FROM silver.fraud_labels_history
) AS ranked
WHERE recency = 1
