-- Figure 8: transfer delta against student properties: accuracy before transfer, size, family.
-- Per (method, student): mean, min and max delta_last over its single-teacher transfers (runs of one
-- teacher averaged first), with the student's accuracy before transfer and its catalog params/family
-- ('unknown' when the student is not in the catalog); ci_low/high_pp = 95% t interval of the mean over the
-- student's teachers (NULL with one teacher). Reads: transfers (per_pair: paper_transfers, pretrained students, no mixup), models.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
SELECT
    t.method,
    t.student,
    coalesce(m.family, 'unknown') AS family,
    m.params_m,
    100 * avg(t.acc_before)   AS student_acc_pct,
    count(*)                  AS n_teachers,
    100 * avg(t.delta_last)   AS mean_delta_pp,
    100 * mean_ci_low(avg(t.delta_last), stddev_samp(t.delta_last), count(*))  AS ci_low_pp,
    100 * mean_ci_high(avg(t.delta_last), stddev_samp(t.delta_last), count(*)) AS ci_high_pp,
    100 * min(t.delta_last)   AS min_delta_pp,
    100 * max(t.delta_last)   AS max_delta_pp
FROM per_pair t
LEFT JOIN models m ON m.model_id = t.student
GROUP BY ALL
ORDER BY t.method, family, t.student;
