-- Robustness (METHOD.md section 5): per student and setting, clean, FGSM and I-FGSM accuracy (percent)
-- at each eps (pixel units of [0, 1] images), with the feature clustering: V-measure beside its chance
-- level (V-measure is far above 0 for a random clustering with few points per cluster) and the adjusted
-- mutual information (0 at chance, 1 for clusters equal to the classes). "before transfer" rows are the
-- zoo model itself; the others are the last student of each transfer, labelled by method, temperature,
-- batch mixing and student initialisation, averaged over its runs (pairs x seeds: n_runs). n = samples
-- evaluated per run (the eval split or its stratified subset). Reads: robustness, transfers.
WITH labelled AS (
    SELECT
        r.model_id                                          AS student,
        CASE WHEN r.transfer_id IS NULL THEN 'before transfer' ELSE t.method END AS setting,
        t.temperature,
        coalesce(t.mixup, CASE WHEN r.transfer_id IS NULL THEN NULL ELSE 'none' END) AS mixup,
        round(100 * coalesce(t.mixup_share, 0.0))::INTEGER   AS mixed_pct,
        coalesce(t.student_init, CASE WHEN r.transfer_id IS NULL THEN NULL ELSE 'pretrained' END) AS student_init,
        r.eps, r.n, r.clean_acc, r.fgsm_acc, r.ifgsm_acc, r.v_measure, r.v_chance, r.ami, r.ifgsm_steps
    FROM robustness r
    LEFT JOIN transfers t ON t.job_id = r.transfer_id
)
SELECT
    student, setting, temperature, mixup, mixed_pct, student_init,
    round(eps * 255, 2)                     AS eps_255,
    count(*)                                AS n_runs,
    min(n)                                  AS n,
    round(100 * avg(clean_acc), 2)          AS clean_pct,
    round(100 * avg(fgsm_acc), 2)           AS fgsm_pct,
    round(100 * avg(ifgsm_acc), 2)          AS ifgsm_pct,
    min(ifgsm_steps)                        AS ifgsm_steps,
    round(avg(v_measure), 3)                AS v_measure,
    round(avg(v_chance), 3)                 AS v_chance,
    round(avg(ami), 3)                      AS ami
FROM labelled
GROUP BY student, setting, temperature, mixup, mixed_pct, student_init, eps
ORDER BY student, setting = 'before transfer' DESC, setting, temperature, mixup, mixed_pct, student_init, eps
