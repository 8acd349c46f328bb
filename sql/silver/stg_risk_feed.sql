-- paylake: materialized=temporary
-- Every bronze risk row, typed and classified: kept | superseded | quarantined.
-- A batch is one landing file; within it the highest flag wins for an account.
WITH typed AS (
    SELECT
        account_id AS raw_account_id,
        risk_flag AS raw_risk_flag,
        NULLIF(TRIM(account_id), '') AS account_id,
        NULLIF(TRIM(risk_flag), '') AS risk_flag_text,
        CASE WHEN TRIM(risk_flag) IN ('0', '1', '2') THEN CAST(TRIM(risk_flag) AS INT) END AS risk_flag,
        _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at
    FROM bronze.risk_feed
),
checked AS (
    SELECT
        *,
        concat_ws(',',
            CASE WHEN account_id IS NULL THEN 'account_id_required' END,
            CASE WHEN regexp_like(account_id, '\p{Cc}') THEN 'account_id_without_control_characters' END,
            CASE WHEN risk_flag_text IS NULL THEN 'risk_flag_required' END,
            CASE WHEN risk_flag_text IS NOT NULL AND risk_flag IS NULL THEN 'risk_flag_in_0_1_2' END
        ) AS rule_failures
    FROM typed
)
SELECT
    raw_account_id, raw_risk_flag, account_id, risk_flag,
    CASE
        WHEN row_number() OVER (
            PARTITION BY account_id, _source_file ORDER BY risk_flag DESC, _source_line
        ) = 1 THEN 'kept'
        ELSE 'superseded'
    END AS outcome,
    rule_failures,
    _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at
FROM checked
WHERE rule_failures = ''
UNION ALL
SELECT
    raw_account_id, raw_risk_flag, account_id, risk_flag, 'quarantined' AS outcome, rule_failures,
    _rescued, _source_file, _source_line, _file_sha256, _batch_id, _ingested_at, _known_at
FROM checked
WHERE rule_failures <> ''
