-- Figure 7: knowledge gain against knowledge loss, one point per single-teacher transfer job.
-- gain = % of eval samples the initial student got wrong and the final student gets right;
-- loss = % it got right and now gets wrong; delta_last = gain - loss. Points above the diagonal
-- (gain > loss) are positive transfers. Reads: transfers.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
SELECT
    job_id,
    method_key(method, hparams_json) AS method,
    student,
    teacher,
    100 * gain       AS gain_pct,
    100 * loss       AS loss_pct,
    100 * delta_last AS delta_last_pp
FROM transfers
WHERE study_part = 'transfer' AND mode = 'single'
ORDER BY method, student, teacher, job_id;
