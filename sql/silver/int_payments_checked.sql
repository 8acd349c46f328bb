-- paylake: materialized=temporary
-- Every bronze payment row typed and checked once: its parsed values, the names of the rules it
-- failed (empty when none).
WITH typed AS (
    SELECT
        payment_id AS raw_payment_id,
        src_account_id AS raw_src_account_id,
        dest_account_id AS raw_dest_account_id,
        payment_reference AS raw_payment_reference,
        amount AS raw_amount,
        "timestamp" AS raw_timestamp,
        NULLIF(TRIM(payment_id), '') AS payment_id,
        NULLIF(TRIM(src_account_id), '') AS src_account_id,
        NULLIF(TRIM(dest_account_id), '') AS dest_account_id,
        NULLIF(TRIM(payment_reference), '') AS payment_reference,
        NULLIF(TRIM(amount), '') AS amount_text,
        -- Plain decimals with at most two significant decimals; no exponents or separators.
        CASE
            WHEN regexp_like(TRIM(amount), '^[+-]?[0-9]{1,16}(\.[0-9]{0,2}0*)?$')
            THEN TRY_CAST(TRIM(amount) AS DECIMAL(18, 2))
        END AS amount,
        NULLIF(TRIM("timestamp"), '') AS timestamp_text,
        -- ISO-8601 only: date, space or T, time, optional fraction, optional Z or offset.
        COALESCE(regexp_like(
            TRIM("timestamp"),
            '^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:?[0-9]{2})?$'
        ), false) AS timestamp_is_iso8601,
        _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at,
        _schema_fingerprint
    FROM bronze.payments
),
parsed AS (
    SELECT
        *,
        CASE
            WHEN timestamp_is_iso8601
            THEN arrow_cast(TRY_CAST(TRIM(raw_timestamp) AS TIMESTAMP), 'Timestamp(Microsecond, Some("UTC"))')
        END AS payment_timestamp
    FROM typed
),
checked AS (
    SELECT
        *,
        concat_ws(',',
            CASE WHEN payment_id IS NULL THEN 'payment_id_required' END,
            CASE WHEN src_account_id IS NULL THEN 'src_account_id_required' END,
            CASE WHEN dest_account_id IS NULL THEN 'dest_account_id_required' END,
            -- A NUL or other control character makes an id that only looks like another one.
            CASE WHEN regexp_like(payment_id, '\p{Cc}') THEN 'payment_id_without_control_characters' END,
            CASE WHEN regexp_like(src_account_id, '\p{Cc}')
                THEN 'src_account_id_without_control_characters' END,
            CASE WHEN regexp_like(dest_account_id, '\p{Cc}')
                THEN 'dest_account_id_without_control_characters' END,
            CASE WHEN amount_text IS NULL THEN 'amount_required' END,
            CASE WHEN amount_text IS NOT NULL AND amount IS NULL THEN 'amount_is_decimal_18_2' END,
            CASE WHEN amount <= 0 THEN 'amount_positive' END,
            -- One implausible payment is quarantined; it must not stop the whole table.
            CASE WHEN amount > 10000000 THEN 'amount_at_most_10_million' END,
            CASE WHEN timestamp_text IS NULL THEN 'timestamp_required' END,
            CASE WHEN timestamp_text IS NOT NULL AND NOT timestamp_is_iso8601 THEN 'timestamp_is_iso8601' END,
            -- ISO 8601 but outside what a timestamp holds (e.g. year 0001).
            CASE WHEN timestamp_is_iso8601 AND payment_timestamp IS NULL THEN 'timestamp_in_range' END
        ) AS rule_failures
    FROM parsed
)
SELECT * FROM checked
