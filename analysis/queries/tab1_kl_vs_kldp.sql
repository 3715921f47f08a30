-- Table 1: per student, transfer delta of KL-Dist against KL+DP, mean and std over teachers.
-- Single-teacher transfers of method 'kl' and supervised 'kl_dp' (method_key() keeps unsupervised runs
-- apart). Runs of one (method, student, teacher) are averaged first; std is the sample standard deviation
-- over teachers (NULL with one teacher). Deltas in percentage points. Reads: transfers, models.
WITH per_teacher AS (
    SELECT method_key(method, hparams_json) AS method, student, teacher, avg(delta_last) AS delta_last
    FROM transfers
    WHERE study_part = 'transfer' AND mode = 'single'
    GROUP BY ALL
)
SELECT
    t.student,
    coalesce(m.family, 'unknown')                                        AS family,
    count(*) FILTER (WHERE t.method = 'kl')                              AS kl_n,
    100 * avg(t.delta_last) FILTER (WHERE t.method = 'kl')               AS kl_mean_pp,
    100 * stddev_samp(t.delta_last) FILTER (WHERE t.method = 'kl')       AS kl_std_pp,
    count(*) FILTER (WHERE t.method = 'kl_dp')                           AS kl_dp_n,
    100 * avg(t.delta_last) FILTER (WHERE t.method = 'kl_dp')            AS kl_dp_mean_pp,
    100 * stddev_samp(t.delta_last) FILTER (WHERE t.method = 'kl_dp')    AS kl_dp_std_pp
FROM per_teacher t
LEFT JOIN models m ON m.model_id = t.student
WHERE t.method IN ('kl', 'kl_dp')
GROUP BY ALL
ORDER BY family, t.student;
