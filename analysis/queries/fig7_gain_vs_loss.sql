-- Figure 7: knowledge gain against knowledge loss, one point per single-teacher transfer job.
-- gain = % of eval samples the initial student got wrong and the final student gets right;
-- loss = % it got right and now gets wrong; delta_last = gain - loss. Points above the diagonal
-- (gain > loss) are positive transfers. Each job's uncertainty: n_gain / n_loss (the counts), n_eval,
-- p_mcnemar (exact two-sided McNemar), delta_ci_low/high_pp (95% paired score interval of delta_last,
-- zoo_study/stats.py); significant = p_mcnemar < 0.05. Reads: transfers (paper_transfers: pretrained students, no mixup).
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
SELECT
    job_id,
    method_key(method, hparams_json) AS method,
    student,
    teacher,
    seed,
    100 * gain          AS gain_pct,
    100 * loss          AS loss_pct,
    100 * delta_last    AS delta_last_pp,
    100 * delta_ci_low  AS delta_ci_low_pp,
    100 * delta_ci_high AS delta_ci_high_pp,
    n_gain,
    n_loss,
    n_eval,
    p_mcnemar,
    coalesce(p_mcnemar < 0.05, false) AS significant
FROM paper_transfers
WHERE study_part = 'transfer' AND mode = 'single'
ORDER BY method, student, teacher, job_id;
