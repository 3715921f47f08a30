-- Figure 5b: overall transfer rate against student size, by architecture family.
-- Overall transfer rate of a single-teacher job = of the initial positive flips (teacher right, student
-- wrong before transfer), the % the student gets right after. Per (method, student): the mean over its
-- teachers' jobs (mean_rate_pct) and the pooled rate over all their flips (pooled_rate_pct), with the
-- student's params (millions) and family from the model catalog ('unknown' when not in the catalog).
-- Reads: transfers (paper_transfers: pretrained students, no mixup), transfer_predictions, predictions (of the teacher), models.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH jobs AS (
    SELECT job_id, method_key(method, hparams_json) AS method, student, teacher
    FROM paper_transfers
    WHERE study_part = 'transfer' AND mode = 'single'
),
per_job AS (
    SELECT
        j.job_id,
        j.method,
        j.student,
        j.teacher,
        count(*)                                              AS n_flips,
        count(*) FILTER (WHERE tp.pred_after = tp.label)      AS n_transferred
    FROM jobs j
    JOIN transfer_predictions tp ON tp.job_id = j.job_id
    JOIN predictions tpred ON tpred.model_id = j.teacher AND tpred.sample_id = tp.sample_id
    WHERE tpred.pred = tp.label AND tp.pred_before <> tp.label
    GROUP BY ALL
)
SELECT
    p.method,
    p.student,
    coalesce(m.family, 'unknown')                             AS family,
    m.params_m,
    count(*)                                                  AS n_jobs,
    100 * avg(p.n_transferred::DOUBLE / p.n_flips)            AS mean_rate_pct,
    100.0 * sum(p.n_transferred) / sum(p.n_flips)             AS pooled_rate_pct,
    sum(p.n_flips)                                            AS n_flips
FROM per_job p
LEFT JOIN models m ON m.model_id = p.student
GROUP BY ALL
ORDER BY p.method, family, m.params_m, p.student;
