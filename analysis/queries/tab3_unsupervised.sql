-- Table 3: unsupervised KL+DP (no labels: route each sample by max-probability confidence) per student,
-- next to supervised KL+DP. Mean and sample std of delta_last over teachers (runs averaged first), in
-- percentage points, with the 95% t interval of the mean over teachers (*_ci_low/high_pp; with one teacher
-- and one run, that run's paired score interval, zoo_study/stats.py) and the number of teachers whose delta
-- is significantly > 0 (McNemar p < 0.05, every run). Routing = mean share of transfer-set samples the data
-- partitioning sent to the teacher (teacher_share), and of the positive-flip / negative-flip samples
-- (teacher_share_pos / teacher_share_neg; paper: 72% / 9%), in percent. A run counts as unsupervised when
-- method_key() says so: method kl_dp_unsup, or kl_dp (whose unsupervised_twin it is, methods view) with
-- hparams_json "unsupervised": true / "supervised": false. Reads: transfers (per_pair: paper_transfers,
-- pretrained students, no mixup), models.
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
        avg(teacher_share)       AS share,
        avg(teacher_share_pos)   AS share_pos,
        avg(teacher_share_neg)   AS share_neg
    FROM per_pair
    WHERE method IN ('kl_dp', 'kl_dp_unsup')
    GROUP BY student, method
)
SELECT
    s.student,
    coalesce(m.family, 'unknown')                                     AS family,
    coalesce(max(s.n) FILTER (WHERE s.method = 'kl_dp_unsup'), 0)     AS unsup_n,
    100 * max(s.m)  FILTER (WHERE s.method = 'kl_dp_unsup')           AS unsup_mean_pp,
    100 * max(s.sd) FILTER (WHERE s.method = 'kl_dp_unsup')           AS unsup_std_pp,
    100 * max(s.lo) FILTER (WHERE s.method = 'kl_dp_unsup')           AS unsup_ci_low_pp,
    100 * max(s.hi) FILTER (WHERE s.method = 'kl_dp_unsup')           AS unsup_ci_high_pp,
    max(s.n_sig) FILTER (WHERE s.method = 'kl_dp_unsup')              AS unsup_n_sig,
    100 * max(s.share) FILTER (WHERE s.method = 'kl_dp_unsup')        AS unsup_teacher_share_pct,
    100 * max(s.share_pos) FILTER (WHERE s.method = 'kl_dp_unsup')    AS unsup_share_pos_pct,
    100 * max(s.share_neg) FILTER (WHERE s.method = 'kl_dp_unsup')    AS unsup_share_neg_pct,
    coalesce(max(s.n) FILTER (WHERE s.method = 'kl_dp'), 0)           AS sup_n,
    100 * max(s.m)  FILTER (WHERE s.method = 'kl_dp')                 AS sup_mean_pp,
    100 * max(s.lo) FILTER (WHERE s.method = 'kl_dp')                 AS sup_ci_low_pp,
    100 * max(s.hi) FILTER (WHERE s.method = 'kl_dp')                 AS sup_ci_high_pp,
    100 * max(s.share) FILTER (WHERE s.method = 'kl_dp')              AS sup_teacher_share_pct,
    100 * max(s.share_pos) FILTER (WHERE s.method = 'kl_dp')          AS sup_share_pos_pct,
    100 * max(s.share_neg) FILTER (WHERE s.method = 'kl_dp')          AS sup_share_neg_pct
FROM per_student s
LEFT JOIN models m ON m.model_id = s.student
GROUP BY s.student, m.family
HAVING coalesce(max(s.n) FILTER (WHERE s.method = 'kl_dp_unsup'), 0) > 0
ORDER BY family, s.student;
