-- paylake: materialized=temporary
-- The payment ids that more than one valid Bronze row carries: the only rows stg_payments
-- ranks. One aggregate over every payment id, computed once per run (stg_payments reads it to
-- pick the rows to rank and to pass the others through).
SELECT payment_id
FROM silver.int_payments_checked
WHERE rule_failures = ''
GROUP BY payment_id
HAVING count(*) > 1
