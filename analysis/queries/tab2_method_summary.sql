-- Table 2: per-method summary of single-teacher transfers.
-- success_rate_mean_pct: mean over students of each student's success rate (share of its teachers with
-- delta_last > 0, as in Fig 4a); success_rate_pooled_pct: share of all (student, teacher) pairs with a
-- positive delta. Runs of one (method, student, teacher) are averaged first. Deltas in percentage
-- points, gain/loss and teacher routing share in percent. Reads: transfers.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH per_teacher AS (
    SELECT
        method_key(method, hparams_json) AS method,
        student,
        teacher,
        avg(delta_last)    AS delta_last,
        avg(delta_best)    AS delta_best,
        avg(gain)          AS gain,
        avg(loss)          AS loss,
        avg(teacher_share) AS teacher_share,
        count(*)           AS n_runs
    FROM transfers
    WHERE study_part = 'transfer' AND mode = 'single'
    GROUP BY ALL
),
per_student AS (
    SELECT method, student, avg(CASE WHEN delta_last > 0 THEN 1.0 ELSE 0.0 END) AS success_rate
    FROM per_teacher
    GROUP BY method, student
)
SELECT
    t.method,
    count(DISTINCT t.student)                                   AS n_students,
    count(*)                                                    AS n_pairs,
    sum(t.n_runs)                                               AS n_runs,
    (SELECT 100 * avg(s.success_rate) FROM per_student s WHERE s.method = t.method)    AS success_rate_mean_pct,
    (SELECT 100 * median(s.success_rate) FROM per_student s WHERE s.method = t.method) AS success_rate_median_pct,
    100 * avg(CASE WHEN t.delta_last > 0 THEN 1.0 ELSE 0.0 END) AS success_rate_pooled_pct,
    100 * avg(t.delta_last)                                     AS mean_delta_last_pp,
    100 * stddev_samp(t.delta_last)                             AS std_delta_last_pp,
    100 * avg(t.delta_best)                                     AS mean_delta_best_pp,
    100 * avg(t.gain)                                           AS mean_gain_pct,
    100 * avg(t.loss)                                           AS mean_loss_pct,
    100 * avg(t.teacher_share)                                  AS mean_teacher_share_pct
FROM per_teacher t
GROUP BY t.method
ORDER BY t.method;
