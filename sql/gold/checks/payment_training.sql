-- Invariants of gold.payment_training, checked on the staged build before it is published.
-- Each check returns the rows that break it; any row fails the build.

-- check: one_row_per_payment
-- As many rows as eligible payments; that no payment_id repeats is the error-severity
-- expectation payment_id_unique (an aggregate that can spill), not a count(DISTINCT) here,
-- whose set of every id stays in memory (measured: 2 GiB resident at 10M payments).
SELECT expected.n AS expected_rows, built.n AS built_rows
FROM (
    SELECT count(*) AS n
    FROM params.run AS r CROSS JOIN silver.payments AS p
    WHERE p.known_at <= r.as_of AND p."timestamp" <= r.as_of
) AS expected
CROSS JOIN (SELECT count(*) AS n FROM gold.payment_training) AS built
WHERE expected.n <> built.n

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
