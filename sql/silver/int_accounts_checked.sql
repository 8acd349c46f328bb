-- paylake: materialized=temporary
-- Every bronze account row typed and checked once: its parsed values, the names of the rules it
-- failed (empty when none). Read twice by stg_accounts, which otherwise evaluated it twice.
WITH typed AS (
    SELECT
        account_id AS raw_account_id,
        opening_date AS raw_opening_date,
        NULLIF(TRIM(account_id), '') AS account_id,
        NULLIF(TRIM(opening_date), '') AS opening_date_text,
        CASE
            WHEN regexp_like(TRIM(opening_date), '^[0-9]{4}-[0-9]{2}-[0-9]{2}$')
            THEN TRY_CAST(TRIM(opening_date) AS DATE)
        END AS opening_date,
        _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at
    FROM bronze.accounts
)
SELECT
    *,
    concat_ws(',',
        CASE WHEN account_id IS NULL THEN 'account_id_required' END,
        CASE WHEN regexp_like(account_id, '\p{Cc}') THEN 'account_id_without_control_characters' END,
        CASE WHEN opening_date_text IS NULL THEN 'opening_date_required' END,
        CASE WHEN opening_date_text IS NOT NULL AND opening_date IS NULL THEN 'opening_date_is_date' END
    ) AS rule_failures
FROM typed
