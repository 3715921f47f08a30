-- Figure 5a: transfer rate for the teacher's top-X% classes, per single-teacher transfer job.
-- Initial positive flips of a job: eval samples the teacher gets right (its predictions file) and the
-- student got wrong before transfer (pred_before). The teacher's top-X% classes for the pair: classes
-- sorted by positive flips (pair_classes, descending, ties by class_id), the smallest prefix whose
-- cumulative share of flips reaches X% - a class belongs to it when the flips before it are still < X%.
-- transfer_rate_pct = of the initial positive flips whose label is in those classes, the % the student
-- gets right after transfer (pred_after). X in 2, 5, 20, 50, 100; X = 100 is the overall transfer rate.
-- Reads: transfers (paper_transfers: pretrained students, no mixup), transfer_predictions, predictions (of the teacher), pair_classes.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH jobs AS (
    SELECT job_id, method_key(method, hparams_json) AS method, student, teacher
    FROM paper_transfers
    WHERE study_part = 'transfer' AND mode = 'single'
),
ranked_classes AS (
    SELECT
        teacher,
        student,
        class_id,
        pos_flips,
        sum(pos_flips) OVER (PARTITION BY teacher, student ORDER BY pos_flips DESC, class_id
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum_flips,
        sum(pos_flips) OVER (PARTITION BY teacher, student) AS total_flips
    FROM pair_classes
    WHERE pos_flips > 0
),
x_values AS (
    SELECT unnest([2, 5, 20, 50, 100]) AS x_pct
),
top_classes AS (
    SELECT r.teacher, r.student, x.x_pct, r.class_id
    FROM ranked_classes r, x_values x
    WHERE 100 * (r.cum_flips - r.pos_flips) < x.x_pct * r.total_flips
),
initial_flips AS (
    SELECT j.job_id, j.method, j.student, j.teacher, tp.sample_id, tp.label, tp.pred_after = tp.label AS right_after
    FROM jobs j
    JOIN transfer_predictions tp ON tp.job_id = j.job_id
    JOIN predictions tpred ON tpred.model_id = j.teacher AND tpred.sample_id = tp.sample_id
    WHERE tpred.pred = tp.label AND tp.pred_before <> tp.label
)
SELECT
    f.job_id,
    f.method,
    f.student,
    f.teacher,
    tc.x_pct,
    count(*)                                AS n_flips,
    count(*) FILTER (WHERE f.right_after)   AS n_transferred,
    100.0 * count(*) FILTER (WHERE f.right_after) / count(*) AS transfer_rate_pct
FROM initial_flips f
JOIN top_classes tc ON tc.teacher = f.teacher AND tc.student = f.student AND tc.class_id = f.label
GROUP BY f.job_id, f.method, f.student, f.teacher, tc.x_pct
ORDER BY f.method, f.student, f.teacher, f.job_id, tc.x_pct;
