-- Mixup KD (METHOD.md section 5): student accuracy after transfer per objective, temperature, batch
-- mixing (none / PMU with the share of each batch mixed / FMU), student initialisation (pretrained /
-- scratch; scratch starts from the untrained architecture, so its acc_before is chance level and its
-- delta large by construction) and training length (epochs). Shown only when the study ran any mixup,
-- scratch or Std-KD transfer.
-- Teachers trained with and without mixup are kept apart (teacher_mixup: 'mixup' when the teacher's
-- embedded recipe used mixup (recipe_json holds the checkpoint metadata, its recipe under "recipe"), 'none' when it did not, NULL for a model without a recipe, e.g. timm).
-- Per student and setting: runs (teachers x seeds) and distinct seeds; mean accuracy after transfer in
-- percent with its 95% t interval over runs (none with one run); mean delta_last in pp with its t interval
-- over runs (one run: its paired score interval, zoo_study/stats.py). Students are kept apart: their
-- accuracies differ by design.
-- vs_none: the paired effect of mixing. Each mixed run is paired with the unmixed ('none') run that differs
-- from it only in mixing (same student, teacher, objective, temperature, initialisation, seed, epochs, lr,
-- hyper-parameters and transfer-set size); vs_none_pp is the mean over those pairs of acc_last(mixed) -
-- acc_last(none) in pp, with its 95% t interval over the pairs (n_paired; none with one pair). Seeds share
-- the data, so pairing removes the teacher's and the split's share of the variance. NULL on 'none' rows.
-- NULL student_init / mixup come from files written before those settings existed: pretrained / none.
-- Reads: transfers, models.
WITH runs AS (
    SELECT
        t.student,
        t.teacher,
        CASE
            WHEN m.recipe_json IS NULL THEN NULL
            WHEN coalesce(json_extract(m.recipe_json, '$.recipe.mixup_alpha')::DOUBLE, 0) > 0 THEN 'mixup'
            ELSE 'none'
        END                                  AS teacher_mixup,
        t.method,
        t.temperature,
        coalesce(t.mixup, 'none')            AS mixup,
        coalesce(t.mixup_share, 0.0)         AS mixup_share,
        coalesce(t.student_init, 'pretrained') AS student_init,
        t.seed, t.epochs, t.lr, t.hparams_json, t.n_train,
        t.acc_last, t.delta_last, t.delta_ci_low, t.delta_ci_high
    FROM transfers AS t
    LEFT JOIN models AS m ON m.model_id = t.teacher
    WHERE t.mode = 'single' AND t.study_part = 'transfer'
),
paired AS (  -- each mixed run beside its unmixed twin (the mean if a study holds several)
    SELECT r.student, r.teacher, r.method, r.temperature, r.mixup, r.mixup_share, r.student_init, r.seed,
           r.epochs, r.lr, r.hparams_json, r.n_train,
           any_value(r.acc_last) - avg(n.acc_last) AS vs_none
    FROM runs AS r
    JOIN runs AS n
      ON n.mixup = 'none' AND r.mixup <> 'none'
     AND n.student = r.student AND n.teacher = r.teacher AND n.method = r.method
     AND n.temperature = r.temperature AND n.student_init = r.student_init AND n.seed = r.seed
     AND n.epochs = r.epochs AND n.lr = r.lr AND n.hparams_json = r.hparams_json AND n.n_train = r.n_train
    GROUP BY r.student, r.teacher, r.method, r.temperature, r.mixup, r.mixup_share, r.student_init, r.seed,
             r.epochs, r.lr, r.hparams_json, r.n_train
),
runs_paired AS (
    SELECT r.*, p.vs_none
    FROM runs AS r
    LEFT JOIN paired AS p USING (student, teacher, method, temperature, mixup, mixup_share, student_init, seed,
                                 epochs, lr, hparams_json, n_train)
),
agg AS (
    SELECT
        student, teacher_mixup, method, temperature, mixup, mixup_share, student_init, epochs,
        count(*)                  AS n_runs,
        count(DISTINCT seed)      AS n_seeds,
        avg(acc_last)             AS acc,
        stddev_samp(acc_last)     AS acc_sd,
        avg(delta_last)           AS delta,
        stddev_samp(delta_last)   AS delta_sd,
        min(delta_ci_low)         AS run_lo,
        min(delta_ci_high)        AS run_hi,
        count(vs_none)            AS n_paired,
        avg(vs_none)              AS vs_none,
        stddev_samp(vs_none)      AS vs_none_sd
    FROM runs_paired
    GROUP BY student, teacher_mixup, method, temperature, mixup, mixup_share, student_init, epochs
)
SELECT
    student,
    teacher_mixup,
    method,
    temperature,
    mixup,
    round(100 * mixup_share)::INTEGER                           AS mixed_pct,
    student_init,
    epochs,
    n_runs,
    n_seeds,
    round(100 * acc, 2)                                         AS acc_after_pct,
    round(100 * mean_ci_low(acc, acc_sd, n_runs), 2)            AS acc_ci_low_pct,
    round(100 * mean_ci_high(acc, acc_sd, n_runs), 2)           AS acc_ci_high_pct,
    round(100 * delta, 2)                                       AS delta_pp,
    round(100 * CASE WHEN n_runs = 1 THEN run_lo ELSE mean_ci_low(delta, delta_sd, n_runs) END, 2)  AS delta_ci_low_pp,
    round(100 * CASE WHEN n_runs = 1 THEN run_hi ELSE mean_ci_high(delta, delta_sd, n_runs) END, 2) AS delta_ci_high_pp,
    CASE WHEN n_paired > 0 THEN n_paired END                    AS n_paired,
    round(100 * vs_none, 2)                                     AS vs_none_pp,
    round(100 * mean_ci_low(vs_none, vs_none_sd, n_paired), 2)  AS vs_none_ci_low_pp,
    round(100 * mean_ci_high(vs_none, vs_none_sd, n_paired), 2) AS vs_none_ci_high_pp
FROM agg
WHERE EXISTS (SELECT 1 FROM runs WHERE mixup <> 'none' OR student_init <> 'pretrained' OR method = 'std_kd')
ORDER BY student, student_init, teacher_mixup NULLS LAST, method, temperature, epochs, mixup, mixup_share
