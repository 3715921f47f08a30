-- Table 8: transfer by architecture family: per method, student family and teacher family, the number
-- of (student, teacher) pairs, their success rate two ways (share with delta_last > 0, and share
-- significantly > 0 at 5%: McNemar p_mcnemar < 0.05 and n_gain > n_loss, every run), the share harmed
-- (significantly < 0), and mean (with its 95% t interval over pairs) / min / max delta_last (runs of one
-- pair averaged first). Families come from the model catalog ('unknown' when a model is missing from it).
-- Deltas in percentage points. Reads: transfers (per_pair: paper_transfers, pretrained students, no mixup), models.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
SELECT
    t.method,
    coalesce(ms.family, 'unknown')                                AS student_family,
    coalesce(mt.family, 'unknown')                                AS teacher_family,
    count(*)                                                      AS n_pairs,
    100 * avg(CASE WHEN t.delta_last > 0 THEN 1.0 ELSE 0.0 END)   AS success_rate_pct,
    100 * avg(CASE WHEN t.sig_pos THEN 1.0 ELSE 0.0 END)          AS sig_success_rate_pct,
    100 * avg(CASE WHEN t.sig_neg THEN 1.0 ELSE 0.0 END)          AS harmed_pct,
    100 * avg(t.delta_last)                                       AS mean_delta_pp,
    100 * mean_ci_low(avg(t.delta_last), stddev_samp(t.delta_last), count(*))  AS mean_delta_ci_low_pp,
    100 * mean_ci_high(avg(t.delta_last), stddev_samp(t.delta_last), count(*)) AS mean_delta_ci_high_pp,
    100 * min(t.delta_last)                                       AS min_delta_pp,
    100 * max(t.delta_last)                                       AS max_delta_pp
FROM per_pair t
LEFT JOIN models ms ON ms.model_id = t.student
LEFT JOIN models mt ON mt.model_id = t.teacher
GROUP BY ALL
ORDER BY t.method, student_family, teacher_family;
