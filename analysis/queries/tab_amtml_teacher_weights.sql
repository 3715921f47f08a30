-- AMTML-KD: which teacher each class listens to. Per transfer run (student, teachers) and teacher: the
-- mean over classes of the learned per-class teacher weight (each class's weights sum to 1 over its
-- teachers), its range, and the number of classes for which that teacher has the largest weight, with
-- the delta of the run (pp) and its 95% paired score interval; variant names the transfer.variants
-- entry the run was copied under ('' for the study's own run), student_init / mixup its settings.
-- Reads: teacher_weights, transfers.
WITH ranked AS (
    SELECT w.*, row_number() OVER (PARTITION BY job_id, stage, class_id ORDER BY weight DESC, teacher) AS rk
    FROM teacher_weights w
)
SELECT
    t.student,
    t.teacher                                     AS teachers,
    coalesce(any_value(t.variant), '')            AS variant,
    coalesce(any_value(t.student_init), 'pretrained') AS student_init,
    coalesce(any_value(t.mixup), 'none')          AS mixup,
    r.teacher,
    round(avg(r.weight), 3)                       AS mean_weight,
    round(min(r.weight), 3)                       AS min_weight,
    round(max(r.weight), 3)                       AS max_weight,
    count(*) FILTER (WHERE r.rk = 1)              AS classes_led,
    count(*)                                      AS n_classes,
    round(100 * any_value(t.delta_last), 2)       AS delta_pp,
    round(100 * any_value(t.delta_ci_low), 2)     AS delta_ci_low_pp,
    round(100 * any_value(t.delta_ci_high), 2)    AS delta_ci_high_pp
FROM ranked r
JOIN transfers t ON t.job_id = r.job_id
GROUP BY t.student, t.teacher, r.job_id, r.teacher
ORDER BY t.student, t.teacher, variant, mean_weight DESC
