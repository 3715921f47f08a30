-- Figure 9: does transfer work on datasets other than the one the zoo learned first? Per dataset the
-- study's students were adapted to (zoo.adapt: each model's head replaced and the model fine-tuned or
-- linear-probed on the study's data; 'zoo data' when the zoo was trained on the study's data itself),
-- every KL-Dist and KL+DP transfer of the study: delta_transf (delta_last, pp, with its 95% paired score
-- interval) against the pair's delta_acc (pp). Reads: paper_transfers, pairs, models.
SELECT
    coalesce(json_extract_string(ms.recipe_json, '$.adapted.dataset'), 'zoo data')  AS dataset,
    t.method,
    t.teacher,
    t.student,
    100 * p.delta_acc      AS delta_acc_pp,
    100 * t.delta_last     AS delta_pp,
    100 * t.delta_ci_low   AS delta_ci_low_pp,
    100 * t.delta_ci_high  AS delta_ci_high_pp,
    t.n_eval
FROM paper_transfers AS t
JOIN pairs AS p ON p.teacher = t.teacher AND p.student = t.student
LEFT JOIN models AS ms ON ms.model_id = t.student
WHERE t.mode = 'single' AND t.study_part = 'transfer' AND t.method IN ('kl', 'kl_dp')
ORDER BY dataset, t.method, delta_acc_pp;
