-- Table 2: per-method summary of single-teacher transfers.
-- Success rate two ways, as in Fig 4a: of a (student, teacher) pair, delta_last > 0 (the paper's
-- definition; on a small eval split it counts noise), and delta significantly > 0 at 5% (exact McNemar
-- p_mcnemar < 0.05 and n_gain > n_loss, zoo_study/stats.py); harmed = significantly < 0.
-- success_rate_mean_pct / sig_success_rate_mean_pct: mean over students of each student's rate;
-- *_pooled_pct: share of all pairs, with its 95% Wilson interval (*_ci_low/high_pct).
-- mean_delta_last_pp with its 95% t interval over pairs (mean_delta_last_ci_low/high_pp).
-- delta_best is optimistic: its epoch is chosen on the evaluation split itself.
-- Seeds: runs of one (method, student, teacher) - several seeds - are averaged first (a pair is
-- significant only when every run is); max_seeds = most runs of one pair, n_pairs_multi_seed = pairs with
-- more than one run, mean_seed_sd_pp = mean over those pairs of the sample sd of delta_last across runs.
-- Deltas in percentage points, gain/loss and teacher routing share in percent. Reads: transfers (per_pair: paper_transfers, pretrained students, no mixup).
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH per_student AS (
    SELECT method, student,
           avg(CASE WHEN delta_last > 0 THEN 1.0 ELSE 0.0 END) AS success_rate,
           avg(CASE WHEN sig_pos THEN 1.0 ELSE 0.0 END)        AS sig_success_rate
    FROM per_pair
    GROUP BY method, student
),
per_method AS (
    SELECT method,
           avg(success_rate)        AS success_rate_mean,
           median(success_rate)     AS success_rate_median,
           avg(sig_success_rate)    AS sig_success_rate_mean
    FROM per_student
    GROUP BY method
)
SELECT
    t.method,
    count(DISTINCT t.student)                                   AS n_students,
    count(*)                                                    AS n_pairs,
    sum(t.n_runs)                                               AS n_runs,
    100 * any_value(pm.success_rate_mean)                       AS success_rate_mean_pct,
    100 * any_value(pm.success_rate_median)                     AS success_rate_median_pct,
    100 * avg(CASE WHEN t.delta_last > 0 THEN 1.0 ELSE 0.0 END) AS success_rate_pooled_pct,
    100 * wilson_low(count(*) FILTER (WHERE t.delta_last > 0), count(*))  AS success_rate_pooled_ci_low_pct,
    100 * wilson_high(count(*) FILTER (WHERE t.delta_last > 0), count(*)) AS success_rate_pooled_ci_high_pct,
    100 * any_value(pm.sig_success_rate_mean)                   AS sig_success_rate_mean_pct,
    count(*) FILTER (WHERE t.sig_pos)                           AS n_sig_positive,
    100.0 * count(*) FILTER (WHERE t.sig_pos) / count(*)        AS sig_success_rate_pooled_pct,
    100 * wilson_low(count(*) FILTER (WHERE t.sig_pos), count(*))  AS sig_success_rate_pooled_ci_low_pct,
    100 * wilson_high(count(*) FILTER (WHERE t.sig_pos), count(*)) AS sig_success_rate_pooled_ci_high_pct,
    count(*) FILTER (WHERE t.sig_neg)                           AS n_sig_negative,
    100.0 * count(*) FILTER (WHERE t.sig_neg) / count(*)        AS harmed_pooled_pct,
    100 * avg(t.delta_last)                                     AS mean_delta_last_pp,
    100 * stddev_samp(t.delta_last)                             AS std_delta_last_pp,
    100 * mean_ci_low(avg(t.delta_last), stddev_samp(t.delta_last), count(*))  AS mean_delta_last_ci_low_pp,
    100 * mean_ci_high(avg(t.delta_last), stddev_samp(t.delta_last), count(*)) AS mean_delta_last_ci_high_pp,
    100 * avg(t.delta_best)                                     AS mean_delta_best_pp,
    100 * avg(t.gain)                                           AS mean_gain_pct,
    100 * avg(t.loss)                                           AS mean_loss_pct,
    100 * avg(t.teacher_share)                                  AS mean_teacher_share_pct,
    max(t.n_runs)                                               AS max_seeds,
    count(*) FILTER (WHERE t.n_runs > 1)                        AS n_pairs_multi_seed,
    100 * avg(t.seed_sd) FILTER (WHERE t.n_runs > 1)            AS mean_seed_sd_pp
FROM per_pair t
JOIN per_method pm ON pm.method = t.method
GROUP BY t.method
ORDER BY t.method;
