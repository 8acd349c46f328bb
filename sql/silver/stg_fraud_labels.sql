-- paylake: materialized=temporary
-- Every bronze label row, typed and classified: kept | quarantined.
WITH typed AS (
    SELECT
        payment_id AS raw_payment_id,
        fraud_type AS raw_fraud_type,
        fraud_reported_date AS raw_fraud_reported_date,
        NULLIF(TRIM(payment_id), '') AS payment_id,
        NULLIF(TRIM(fraud_type), '') AS fraud_type,
        NULLIF(TRIM(fraud_reported_date), '') AS reported_text,
        CASE
            WHEN regexp_like(TRIM(fraud_reported_date), '^[0-9]{4}-[0-9]{2}-[0-9]{2}$')
            THEN TRY_CAST(TRIM(fraud_reported_date) AS DATE)
        END AS fraud_reported_date,
        CASE
            WHEN regexp_like(lower(_source_file), '\.(jsonl|ndjson)(\.(gz|zst|zstd))?$') THEN 'api'
            -- Workbook rows are named `path#Sheet`.
            WHEN regexp_like(lower(_source_file), '\.(xlsx|xlsm|xls)#') THEN 'workbook'
            ELSE 'csv'
        END AS label_source,
        _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at
    FROM bronze.fraud_labels
)
SELECT
    *,
    CASE WHEN rule_failures = '' THEN 'kept' ELSE 'quarantined' END AS outcome
FROM (
    SELECT
        *,
        concat_ws(',',
            CASE WHEN payment_id IS NULL THEN 'payment_id_required' END,
            CASE WHEN regexp_like(payment_id, '\p{Cc}') THEN 'payment_id_without_control_characters' END,
            CASE WHEN fraud_type IS NULL THEN 'fraud_type_required' END,
            CASE WHEN reported_text IS NULL THEN 'fraud_reported_date_required' END,
            CASE WHEN reported_text IS NOT NULL AND fraud_reported_date IS NULL
                THEN 'fraud_reported_date_is_date' END
        ) AS rule_failures
    FROM typed
) AS checked
