-- paylake: materialized=view
-- Each training payment, its columns carried along, with every point-in-time feature:
-- - both accounts and their risk flags as known at the payment: the latest account snapshot
--   and the latest risk batch that mentions the account, known at or before its timestamp
--   (bound known_at <= timestamp; a later 0 clears an earlier flag);
-- - the destination's distinct senders over [t - 24h, t);
-- - the source's payment count and amount over the hour, day and week before, and whether it
--   paid this destination at an earlier time.
-- One pass over one stream in time order: the payments (lookups), the account snapshots and
-- the risk batches, each at the instant it became known (`at`). A fact sorts before a lookup
-- at the same instant, and among facts at the same instant the later file wins.
-- `point_in_time_features` keeps per account the latest facts, the running counts and sums and
-- the senders, and per pair of accounts whether they paid each other (see
-- crates/functions/src/point_in_time.rs); a payment counts only for payments at later instants.
-- Run locally, the stream is put in time order day by day, never sorted whole (at 10M payments
-- the two per-account sorts this model had spilled ~1 GiB each).
-- A view, not a temporary model: gold.payment_training streams its rows straight into its
-- label join and partition buckets.
WITH snapshot_instants AS (
    -- The instants account snapshots became known by T, each with the one before and after
    -- it, and the smallest account it lists (about a dozen rows).
    SELECT known_at,
        lag(known_at) OVER (ORDER BY known_at) AS previous_instant,
        lead(known_at) OVER (ORDER BY known_at) AS next_instant,
        first_account_id
    FROM (
        SELECT h.known_at, min(h.account_id) AS first_account_id
        FROM params.run AS params
        CROSS JOIN silver.accounts_history AS h
        WHERE h.known_at <= params.as_of
        GROUP BY h.known_at
    ) AS instants
),
-- Of an account's snapshot rows, only those where something changes: its first after a
-- snapshot instant without it, one whose opening date differs from the row before or after,
-- its last before an instant without it; and one row per instant, so that the function sees
-- every instant. A row followed by the account's row at the next instant with the same opening
-- date `follows_snapshots`: the function then reads the account as known at the latest
-- instant, until a later row about it. The rows left out change nothing the function returns
-- (weekly snapshots of 100k accounts: about 200k rows instead of 1.26M).
account_facts AS (
    -- The file, then the run that landed it (a file resent at its path lands again): the
    -- order silver.accounts_history gives an account's rows (chr(1) sorts before any name).
    SELECT h.account_id, h.known_at AS at,
        arrow_cast(concat(h.snapshot_file, chr(1), h._batch_id), 'Utf8') AS tiebreak,
        h.opening_date, CAST(NULL AS INT) AS risk_flag, true AS is_snapshot,
        NOT (h.opening_date_changes_next OR (h.valid_to IS DISTINCT FROM i.next_instant))
            AS follows_snapshots
    -- The dozen instants are the build side of the join, every snapshot row streams through.
    FROM snapshot_instants AS i
    JOIN (
        SELECT h.*
        FROM params.run AS params
        CROSS JOIN silver.accounts_history AS h
        WHERE h.known_at <= params.as_of
    ) AS h ON h.known_at = i.known_at
    WHERE h.opening_date_changed
        OR (h.previous_known_at IS DISTINCT FROM i.previous_instant)
        OR h.opening_date_changes_next
        OR (h.valid_to IS DISTINCT FROM i.next_instant)
        OR h.account_id = i.first_account_id
),
facts AS (
    SELECT account_id, at, tiebreak, opening_date, risk_flag, is_snapshot, follows_snapshots
    FROM account_facts
    UNION ALL
    SELECT r.account_id, r.known_at AS at, arrow_cast(r.batch_file, 'Utf8') AS tiebreak,
        CAST(NULL AS DATE) AS opening_date, r.risk_flag, false AS is_snapshot,
        false AS follows_snapshots
    FROM params.run AS params
    CROSS JOIN silver.risk_feed_history AS r
    WHERE r.known_at <= params.as_of
),
-- The pass buffers these rows by day (and spills them when its share of the memory pool is
-- full), so they are as narrow as it allows: `account_id` is a payment's source or a fact's
-- account, `at` a payment's time or the instant a fact became known, which is also the fact's
-- known_at (the function's arguments below are computed per row as the rows go through it).
-- At 1M payments over a folder of daily account snapshots, 150 MB of rows had spilled.
stream AS (
    SELECT p.payment_id, p.src_account_id AS account_id, p.dest_account_id, p.amount,
        p.known_at, p.ts AS at, arrow_cast('', 'Utf8') AS tiebreak,
        CAST(NULL AS DATE) AS opening_date, CAST(NULL AS INT) AS risk_flag,
        CAST(NULL AS BOOLEAN) AS is_snapshot, false AS follows_snapshots
    FROM gold.int_training_payments AS p
    UNION ALL
    SELECT arrow_cast(NULL, 'Utf8') AS payment_id, arrow_cast(f.account_id, 'Utf8') AS account_id,
        arrow_cast(NULL, 'Utf8') AS dest_account_id, CAST(NULL AS DECIMAL(18, 2)) AS amount,
        arrow_cast(NULL, 'Timestamp(Microsecond, Some("UTC"))') AS known_at,
        f.at, f.tiebreak, f.opening_date, f.risk_flag, f.is_snapshot, f.follows_snapshots
    FROM facts AS f
),
featured AS (
    SELECT payment_id, account_id AS src_account_id, dest_account_id, amount, at AS ts,
        known_at,
        point_in_time_features(payment_id IS NOT NULL, account_id, dest_account_id, amount, at,
            account_id, opening_date, CASE WHEN is_snapshot THEN at END, risk_flag,
            CASE WHEN NOT is_snapshot THEN at END, follows_snapshots)
            OVER (ORDER BY at, payment_id IS NOT NULL, tiebreak) AS f
    FROM stream
)
SELECT payment_id, src_account_id, dest_account_id, amount, ts, known_at,
    get_field(f, 'src_opening_date') AS src_opening_date,
    get_field(f, 'src_account_known_at') AS src_account_known_at,
    get_field(f, 'src_risk_flag') AS src_risk_flag,
    get_field(f, 'src_risk_known_at') AS src_risk_known_at,
    get_field(f, 'dest_opening_date') AS dest_opening_date,
    get_field(f, 'dest_account_known_at') AS dest_account_known_at,
    get_field(f, 'dest_risk_flag') AS dest_risk_flag,
    get_field(f, 'dest_risk_known_at') AS dest_risk_known_at,
    get_field(f, 'src_count_1h') AS src_count_1h,
    CAST(get_field(f, 'src_amount_1h') AS DECIMAL(29, 2)) AS src_amount_1h,
    get_field(f, 'src_count_24h') AS src_count_24h,
    CAST(get_field(f, 'src_amount_24h') AS DECIMAL(29, 2)) AS src_amount_24h,
    get_field(f, 'src_count_7d') AS src_count_7d,
    CAST(get_field(f, 'src_amount_7d') AS DECIMAL(29, 2)) AS src_amount_7d,
    get_field(f, 'pair_seen_before') AS pair_seen_before,
    get_field(f, 'dest_distinct_senders_24h') AS dest_distinct_senders_24h
FROM featured
WHERE payment_id IS NOT NULL
