-- Table 1: per student, transfer delta of KL-Dist against KL+DP, mean and std over teachers.
-- Single-teacher transfers of method 'kl' and supervised 'kl_dp' (method_key() keeps unsupervised runs
-- apart). Runs of one (method, student, teacher) are averaged first; std is the sample standard deviation
-- over teachers (NULL with one teacher); *_ci_low/high_pp = the 95% t interval of the mean over teachers,
-- or with one teacher its run's paired score interval (zoo_study/stats.py); *_n_sig = teachers whose delta
-- is significantly > 0 (McNemar p < 0.05, every run); *_seeds = most runs (seeds) of one teacher.
-- Deltas in percentage points. Reads: transfers (per_pair: paper_transfers, pretrained students, no mixup), models.
WITH per_student AS (
    SELECT
        student,
        method,
        count(*)                 AS n,
        avg(delta_last)          AS m,
        stddev_samp(delta_last)  AS sd,
        CASE WHEN count(*) = 1 AND max(n_runs) = 1 THEN min(run_ci_low)
             ELSE mean_ci_low(avg(delta_last), stddev_samp(delta_last), count(*)) END  AS lo,
        CASE WHEN count(*) = 1 AND max(n_runs) = 1 THEN min(run_ci_high)
             ELSE mean_ci_high(avg(delta_last), stddev_samp(delta_last), count(*)) END AS hi,
        count(*) FILTER (WHERE sig_pos) AS n_sig,
        max(n_runs)              AS seeds
    FROM per_pair
    WHERE method IN ('kl', 'kl_dp')
    GROUP BY student, method
)
SELECT
    s.student,
    coalesce(m.family, 'unknown')                          AS family,
    coalesce(max(s.n) FILTER (WHERE s.method = 'kl'), 0)   AS kl_n,
    100 * max(s.m)  FILTER (WHERE s.method = 'kl')         AS kl_mean_pp,
    100 * max(s.sd) FILTER (WHERE s.method = 'kl')         AS kl_std_pp,
    100 * max(s.lo) FILTER (WHERE s.method = 'kl')         AS kl_ci_low_pp,
    100 * max(s.hi) FILTER (WHERE s.method = 'kl')         AS kl_ci_high_pp,
    max(s.n_sig) FILTER (WHERE s.method = 'kl')            AS kl_n_sig,
    max(s.seeds) FILTER (WHERE s.method = 'kl')            AS kl_seeds,
    coalesce(max(s.n) FILTER (WHERE s.method = 'kl_dp'), 0) AS kl_dp_n,
    100 * max(s.m)  FILTER (WHERE s.method = 'kl_dp')      AS kl_dp_mean_pp,
    100 * max(s.sd) FILTER (WHERE s.method = 'kl_dp')      AS kl_dp_std_pp,
    100 * max(s.lo) FILTER (WHERE s.method = 'kl_dp')      AS kl_dp_ci_low_pp,
    100 * max(s.hi) FILTER (WHERE s.method = 'kl_dp')      AS kl_dp_ci_high_pp,
    max(s.n_sig) FILTER (WHERE s.method = 'kl_dp')         AS kl_dp_n_sig,
    max(s.seeds) FILTER (WHERE s.method = 'kl_dp')         AS kl_dp_seeds
FROM per_student s
LEFT JOIN models m ON m.model_id = s.student
GROUP BY s.student, m.family
ORDER BY family, s.student;
