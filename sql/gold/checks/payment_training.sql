-- Invariants of gold.payment_training, checked on the staged build before it is published.
-- Each check returns the rows that break it; any row fails the build.

-- check: one_row_per_payment
SELECT expected.n AS expected_rows, built.n AS built_rows, built.distinct_ids
FROM (
    SELECT count(*) AS n
    FROM params.run AS r CROSS JOIN silver.payments AS p
    WHERE p.known_at <= r.as_of AND p."timestamp" <= r.as_of
) AS expected
CROSS JOIN (
    SELECT count(*) AS n, count(DISTINCT payment_id) AS distinct_ids FROM gold.payment_training
) AS built
WHERE expected.n <> built.n OR built.n <> built.distinct_ids

-- check: features_known_by_payment_time
SELECT payment_id FROM gold.payment_training
WHERE src_account_known_at > "timestamp" OR dest_account_known_at > "timestamp"
    OR src_risk_known_at > "timestamp" OR dest_risk_known_at > "timestamp"

-- check: labels_known_by_as_of
SELECT t.payment_id FROM params.run AS r CROSS JOIN gold.payment_training AS t
WHERE t.label_known_at > r.as_of

-- check: fraud_flag_follows_label_status
SELECT payment_id FROM gold.payment_training
WHERE (label_status = 'fraud' AND fraud_flag IS NOT TRUE)
    OR (label_status = 'legit_mature' AND fraud_flag IS NOT FALSE)
    OR (label_status = 'unknown_immature' AND fraud_flag IS NOT NULL)
