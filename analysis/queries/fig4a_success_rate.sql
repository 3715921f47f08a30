-- Figure 4a: transfer success rate per method, one value per student (the figure draws a box per method).
-- Two success rates per student, over the real number of teachers it was paired with:
--   success_rate_pct     = share of its teachers whose transfer ends above where the student started
--                          (delta_last > 0), as in the paper; on a small eval split this counts noise;
--   sig_success_rate_pct = share whose delta is significantly > 0 at 5%: exact McNemar p_mcnemar < 0.05
--                          and n_gain > n_loss (zoo_study/stats.py);
--   harmed_pct           = share significantly < 0 (p_mcnemar < 0.05 and n_loss > n_gain).
-- mean_delta_pp with its 95% t interval over the student's teachers (mean_delta_ci_low/high_pp; NULL with
-- one teacher). Repeated runs of one (method, student, teacher) - several seeds - are averaged first, so
-- each teacher counts once; such a teacher is significant only when every one of its runs is
-- (max_seeds = most runs of one teacher). Single-teacher transfers only. method is method_key(): '_unsup'
-- appended for unsupervised runs. Reads: transfers (per_pair: paper_transfers, pretrained students, no mixup,
-- one row per (method, student, teacher)).
SELECT
    method,
    student,
    count(*)                                                   AS n_teachers,
    count(*) FILTER (WHERE delta_last > 0)                     AS n_positive,
    100.0 * count(*) FILTER (WHERE delta_last > 0) / count(*)  AS success_rate_pct,
    count(*) FILTER (WHERE sig_pos)                            AS n_sig_positive,
    100.0 * count(*) FILTER (WHERE sig_pos) / count(*)         AS sig_success_rate_pct,
    count(*) FILTER (WHERE sig_neg)                            AS n_sig_negative,
    100.0 * count(*) FILTER (WHERE sig_neg) / count(*)         AS harmed_pct,
    100 * avg(delta_last)                                      AS mean_delta_pp,
    100 * mean_ci_low(avg(delta_last), stddev_samp(delta_last), count(*))  AS mean_delta_ci_low_pp,
    100 * mean_ci_high(avg(delta_last), stddev_samp(delta_last), count(*)) AS mean_delta_ci_high_pp,
    sum(n_runs)                                                AS n_runs,
    max(n_runs)                                                AS max_seeds
FROM per_pair
GROUP BY method, student
ORDER BY method, student;
