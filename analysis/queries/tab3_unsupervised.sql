-- Table 3: unsupervised KL+DP (no labels: route each sample by max-probability confidence) per student,
-- next to supervised KL+DP. Mean and sample std of delta_last over teachers (runs averaged first), in
-- percentage points; routing = mean share of transfer-set samples the data partitioning sent to the
-- teacher (teacher_share), in percent. A run counts as unsupervised when method_key() says so: method
-- name containing 'unsup', or hparams_json with "unsupervised": true / "supervised": false.
-- Reads: transfers, models.
WITH per_teacher AS (
    SELECT
        method_key(method, hparams_json) AS method,
        student,
        teacher,
        avg(delta_last)    AS delta_last,
        avg(teacher_share) AS teacher_share
    FROM transfers
    WHERE study_part = 'transfer' AND mode = 'single'
    GROUP BY ALL
)
SELECT
    t.student,
    coalesce(m.family, 'unknown')                                               AS family,
    count(*) FILTER (WHERE t.method = 'kl_dp_unsup')                            AS unsup_n,
    100 * avg(t.delta_last) FILTER (WHERE t.method = 'kl_dp_unsup')             AS unsup_mean_pp,
    100 * stddev_samp(t.delta_last) FILTER (WHERE t.method = 'kl_dp_unsup')     AS unsup_std_pp,
    100 * avg(t.teacher_share) FILTER (WHERE t.method = 'kl_dp_unsup')          AS unsup_teacher_share_pct,
    count(*) FILTER (WHERE t.method = 'kl_dp')                                  AS sup_n,
    100 * avg(t.delta_last) FILTER (WHERE t.method = 'kl_dp')                   AS sup_mean_pp,
    100 * avg(t.teacher_share) FILTER (WHERE t.method = 'kl_dp')                AS sup_teacher_share_pct
FROM per_teacher t
LEFT JOIN models m ON m.model_id = t.student
WHERE t.method IN ('kl_dp', 'kl_dp_unsup')
GROUP BY ALL
HAVING count(*) FILTER (WHERE t.method = 'kl_dp_unsup') > 0
ORDER BY family, t.student;
