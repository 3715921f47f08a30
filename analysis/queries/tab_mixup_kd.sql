-- Mixup KD (METHOD.md section 5): student accuracy after transfer per objective, temperature, batch
-- mixing (none / PMU with the share of each batch mixed / FMU) and student initialisation (pretrained /
-- scratch; scratch starts from the untrained architecture, so its acc_before is chance level and its
-- delta large by construction). Shown only when the study ran any mixup, scratch or Std-KD transfer.
-- Teachers trained with and without mixup are kept apart (teacher_mixup: 'mixup' when the teacher's
-- embedded recipe used mixup (recipe_json holds the checkpoint metadata, its recipe under "recipe"), 'none' when it did not, NULL for a model without a recipe, e.g. timm).
-- Per student and setting: runs (teachers x seeds); mean accuracy after transfer in percent with its 95% t
-- interval over runs (none with one run); mean delta_last in pp with its t interval over runs (one run: its
-- paired score interval, zoo_study/stats.py). Students are kept apart: their accuracies differ by design.
-- NULL student_init / mixup come from files written before those settings existed: pretrained / none.
-- Reads: transfers, models.
WITH runs AS (
    SELECT
        t.student,
        CASE
            WHEN m.recipe_json IS NULL THEN NULL
            WHEN coalesce(json_extract(m.recipe_json, '$.recipe.mixup_alpha')::DOUBLE, 0) > 0 THEN 'mixup'
            ELSE 'none'
        END                                  AS teacher_mixup,
        t.method,
        temperature,
        coalesce(mixup, 'none')              AS mixup,
        coalesce(mixup_share, 0.0)           AS mixup_share,
        coalesce(student_init, 'pretrained') AS student_init,
        acc_last, delta_last, delta_ci_low, delta_ci_high
    FROM transfers AS t
    LEFT JOIN models AS m ON m.model_id = t.teacher
    WHERE t.mode = 'single' AND t.study_part = 'transfer'
),
agg AS (
    SELECT
        student, teacher_mixup, method, temperature, mixup, mixup_share, student_init,
        count(*)                  AS n_runs,
        avg(acc_last)             AS acc,
        stddev_samp(acc_last)     AS acc_sd,
        avg(delta_last)           AS delta,
        stddev_samp(delta_last)   AS delta_sd,
        min(delta_ci_low)         AS run_lo,
        min(delta_ci_high)        AS run_hi
    FROM runs
    GROUP BY student, teacher_mixup, method, temperature, mixup, mixup_share, student_init
)
SELECT
    student,
    teacher_mixup,
    method,
    temperature,
    mixup,
    round(100 * mixup_share)::INTEGER                           AS mixed_pct,
    student_init,
    n_runs,
    round(100 * acc, 2)                                         AS acc_after_pct,
    round(100 * mean_ci_low(acc, acc_sd, n_runs), 2)            AS acc_ci_low_pct,
    round(100 * mean_ci_high(acc, acc_sd, n_runs), 2)           AS acc_ci_high_pct,
    round(100 * delta, 2)                                       AS delta_pp,
    round(100 * CASE WHEN n_runs = 1 THEN run_lo ELSE mean_ci_low(delta, delta_sd, n_runs) END, 2)  AS delta_ci_low_pp,
    round(100 * CASE WHEN n_runs = 1 THEN run_hi ELSE mean_ci_high(delta, delta_sd, n_runs) END, 2) AS delta_ci_high_pp
FROM agg
WHERE EXISTS (SELECT 1 FROM runs WHERE mixup <> 'none' OR student_init <> 'pretrained' OR method = 'std_kd')
ORDER BY student, student_init, teacher_mixup NULLS LAST, method, temperature, mixup, mixup_share
