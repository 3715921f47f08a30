-- Figure 11: sequential multi-teacher transfer, per epoch across stages.
-- One row per recorded epoch of each sequential job (teachers one after another, stage = 0, 1, 2 ...,
-- stage_teacher = the teacher of that stage). step numbers the epochs of a job in order across stages;
-- the epoch-0 row of a later stage repeats the end of the previous stage and is dropped. gain, loss and
-- delta are measured against the student before any transfer. final_delta_pp / final_ci_low_pp /
-- final_ci_high_pp: the job's final delta_last with its 95% paired score interval (zoo_study/stats.py),
-- the same on every row of the job (per-epoch rows carry no counts). Reads: transfers (paper_transfers: pretrained students, no mixup), epochs.
-- method = method_key(method, hparams_json), a macro from analysis/db.py: '_unsup' marks unsupervised runs.
WITH seq AS (
    SELECT job_id, method_key(method, hparams_json) AS method, student, teacher AS teacher_chain,
           delta_last, delta_ci_low, delta_ci_high
    FROM paper_transfers
    WHERE mode = 'sequential'
)
SELECT
    s.job_id,
    s.method,
    s.student,
    s.teacher_chain,
    e.stage,
    e.stage_teacher,
    e.epoch,
    row_number() OVER (PARTITION BY e.job_id ORDER BY e.stage, e.epoch) - 1 AS step,
    100 * e.gain  AS gain_pct,
    100 * e.loss  AS loss_pct,
    100 * e.delta AS delta_pp,
    100 * e.acc   AS acc_pct,
    100 * s.delta_last    AS final_delta_pp,
    100 * s.delta_ci_low  AS final_ci_low_pp,
    100 * s.delta_ci_high AS final_ci_high_pp
FROM seq s
JOIN epochs e ON e.job_id = s.job_id
WHERE NOT (e.stage > 0 AND e.epoch = 0)
ORDER BY s.student, s.job_id, e.stage, e.epoch;
