-- Hyper-parameter grid: per method and hyper-parameter setting (hparams_json, lr and temperature as
-- used), the runs of the grid search (hparams/*.parquet): number of runs and of (student, teacher)
-- pairs, success rate two ways (share of runs with delta_last > 0; share significantly > 0 at 5%: McNemar
-- p_mcnemar < 0.05 and n_gain > n_loss), mean delta_last with its 95% t interval over runs, min / max, and
-- the rank of the setting within its method by mean delta (1 = best; ranking noisy means picks lucky
-- settings too, so the best rank is optimistic). Deltas in percentage points. Reads: hparams.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH settings AS (
    SELECT
        method_key(method, hparams_json)                            AS method,
        hparams_json,
        lr,
        temperature,
        count(*)                                                    AS n_runs,
        count(DISTINCT student || '<-' || teacher)                  AS n_pairs,
        100 * avg(CASE WHEN delta_last > 0 THEN 1.0 ELSE 0.0 END)   AS success_rate_pct,
        100 * avg(CASE WHEN p_mcnemar < 0.05 AND n_gain > n_loss THEN 1.0 ELSE 0.0 END) AS sig_success_rate_pct,
        100 * avg(delta_last)                                       AS mean_delta_pp,
        100 * mean_ci_low(avg(delta_last), stddev_samp(delta_last), count(*))  AS mean_delta_ci_low_pp,
        100 * mean_ci_high(avg(delta_last), stddev_samp(delta_last), count(*)) AS mean_delta_ci_high_pp,
        100 * min(delta_last)                                       AS min_delta_pp,
        100 * max(delta_last)                                       AS max_delta_pp
    FROM hparams
    GROUP BY ALL
)
SELECT
    *,
    rank() OVER (PARTITION BY method ORDER BY mean_delta_pp DESC) AS rank_in_method
FROM settings
ORDER BY method, rank_in_method, hparams_json, lr;
