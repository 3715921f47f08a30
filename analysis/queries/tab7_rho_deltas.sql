-- Table 7: how transfer changes complementarity: delta_rho_pos = rho_pos(teacher, student after) -
-- rho_pos(teacher, student before) (should be < 0: the student absorbed the teacher's extra knowledge),
-- and delta_rho_neg likewise (should stay near 0: the student kept what it knew better).
-- Per (method, student): mean over its single-teacher transfers with recorded rho values (runs of one
-- teacher averaged first), in percentage points. Reads: transfers (paper_transfers: pretrained students, no mixup).
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH per_teacher AS (
    SELECT
        method_key(method, hparams_json)      AS method,
        student,
        teacher,
        avg(rho_pos_after - rho_pos_before)   AS d_rho_pos,
        avg(rho_neg_after - rho_neg_before)   AS d_rho_neg,
        avg(rho_pos_before)                   AS rho_pos_before,
        avg(rho_neg_before)                   AS rho_neg_before
    FROM paper_transfers
    WHERE study_part = 'transfer' AND mode = 'single'
      AND rho_pos_before IS NOT NULL AND rho_pos_after IS NOT NULL
      AND rho_neg_before IS NOT NULL AND rho_neg_after IS NOT NULL
    GROUP BY ALL
)
SELECT
    method,
    student,
    count(*)                 AS n_teachers,
    100 * avg(rho_pos_before) AS rho_pos_before_pct,
    100 * avg(d_rho_pos)      AS delta_rho_pos_pp,
    100 * min(d_rho_pos)      AS delta_rho_pos_min_pp,
    100 * max(d_rho_pos)      AS delta_rho_pos_max_pp,
    100 * avg(rho_neg_before) AS rho_neg_before_pct,
    100 * avg(d_rho_neg)      AS delta_rho_neg_pp,
    100 * min(d_rho_neg)      AS delta_rho_neg_min_pp,
    100 * max(d_rho_neg)      AS delta_rho_neg_max_pp
FROM per_teacher
GROUP BY method, student
ORDER BY method, student;
