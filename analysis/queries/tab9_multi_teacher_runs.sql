-- Table 9: every multi-teacher run in detail: mode, teacher order, final delta, and for sequential runs
-- the delta reached at the end of each stage (from the last recorded epoch of the stage), written as
-- "teacher: +x.xx" in stage order. Each run's uncertainty: delta_ci_low/high_pp (95% paired score interval
-- of delta_last, zoo_study/stats.py), p_mcnemar (exact McNemar), n_gain / n_loss / n_eval. delta_best is
-- optimistic: its epoch is chosen on the evaluation split itself. Deltas in percentage points, teacher
-- routing share in percent.
-- Reads: transfers (paper_transfers: pretrained students, no mixup), epochs.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH multi AS (
    SELECT *
    FROM paper_transfers
    WHERE study_part = 'multi_teacher' OR mode <> 'single'
),
stage_end AS (
    SELECT job_id, stage, stage_teacher, delta
    FROM (
        SELECT e.*, row_number() OVER (PARTITION BY e.job_id, e.stage ORDER BY e.epoch DESC) AS rk
        FROM epochs e
        WHERE e.job_id IN (SELECT job_id FROM multi WHERE mode = 'sequential')
    )
    WHERE rk = 1
),
stages AS (
    SELECT
        job_id,
        string_agg(coalesce(stage_teacher, 'stage ' || stage) || ': ' || printf('%+.2f', 100 * delta), ' -> '
                   ORDER BY stage) AS stage_deltas
    FROM stage_end
    GROUP BY job_id
)
SELECT
    m.student,
    method_key(m.method, m.hparams_json) AS method,
    m.mode,
    m.teacher                            AS teachers_in_order,
    m.seed,
    100 * m.acc_before                   AS acc_before_pct,
    100 * m.delta_last                   AS delta_last_pp,
    100 * m.delta_ci_low                 AS delta_ci_low_pp,
    100 * m.delta_ci_high                AS delta_ci_high_pp,
    m.p_mcnemar,
    m.n_gain,
    m.n_loss,
    m.n_eval,
    100 * m.delta_best                   AS delta_best_pp,
    100 * m.gain                         AS gain_pct,
    100 * m.loss                         AS loss_pct,
    100 * m.teacher_share                AS teacher_share_pct,
    s.stage_deltas,
    m.job_id
FROM multi m
LEFT JOIN stages s ON s.job_id = m.job_id
ORDER BY m.student, method, m.mode, m.teacher, m.seed;
